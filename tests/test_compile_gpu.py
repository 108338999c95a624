"""torch.compile with inductor on a GPU (skipped without CUDA; the CPU side is
tests/test_compile.py): a ZForcing(backend="auto") training step compiled with fullgraph=True --
its backward LSTM and chain through the Triton kernels' custom ops, the other ops traced and
fused by inductor -- gives the eager step's loss and gradients (eager "auto" runs every op on
Triton), float32 with TF32 off on both sides; so does ZForcing(backend="triton"), every op a
custom op in inductor's graph."""
import pytest
import torch

from _helpers import model_loss_and_grads
from zf_kernels import ZForcing

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


# backend="triton" once: each case is an inductor compilation of a whole step (tens of seconds in
# the device check's test stage)
@pytest.mark.parametrize("backend,cond_ln", [("auto", False), ("auto", True), ("triton", False)])
def test_gpu_compiled_model_is_one_graph_with_the_eager_numbers(backend, cond_ln, tf32_flags):
    tf32_flags(matmul=False, cudnn=False)
    torch.manual_seed(0)
    model = ZForcing(5, "gaussian", emb_dim=24, rnn_dim=40, z_dim=6, mlp_dim=20, cond_ln=cond_ln,
                     backend=backend).cuda()
    g = torch.Generator().manual_seed(1)
    y, eps = torch.randn(7, 3, 5, generator=g).cuda(), torch.randn(7, 3, 6, generator=g).cuda()
    step, loss_and_grads = model_loss_and_grads(model, y, eps)
    want = loss_and_grads(step)
    torch._dynamo.reset()
    got = loss_and_grads(torch.compile(step, fullgraph=True))
    for (name, _), a, b in zip([("loss", None)] + list(model.named_parameters()), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
