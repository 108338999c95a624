"""Do the tests have teeth? Each mutant below breaks one rule of the code (a sign, a bound, a
closed interval, a mask, a detach) by replacing one exact snippet; the tests named beside it
must then fail. A mutant that survives is a rule no test guards (a test that cannot fail).

    python tests/mutation_check.py            # every mutant (tens of minutes on 2 cores)
    python tests/mutation_check.py --list     # names only
    python tests/mutation_check.py NAME ...   # some

Each mutant runs in a scratch copy of the working tree (files git tracks or does not ignore),
so the checkout is never touched, after one run of their tests on the unchanged copy (which
must pass, else a kill means nothing); exit status 1 if any mutant survives or its snippet is not
found exactly once. tests/test_mutation_check.py (in CI) checks only the snippets, so that a
change of the code that moves them shows at once. Written 2026-11-28 after a first round of ~60
mutants found ten surviving (a falling aux schedule, the gradient clip, a non-finite gradient,
padded .npz steps, five open clamp intervals in the Triton and CUDA chains, the Triton
log-sum-exp's inf - inf guard), a second two (the sampler's scales), and a third (36 mutants over
DDP, the WAV / text / synthetic / MNIST loaders, discrete sampling, checkpoint loading, the ops'
checks and python/) 24: rank 1 logging, the per-rank batch check and noise seed, WAV rate 0 and
hidden files, the text vocabulary's ties and literal specials and its holdout, synthetic full
lengths and disjoint splits, MNIST label 10 and short image headers, categorical start token and
temperature and Bernoulli draws (model and python/), a prefix past the split, a checkpoint's
dtype and autocast, wider or other-device masks and tensors, explain's backend check, the
interpreter on CUDA tensors: each got a test; a fourth (nine over the kernels' launch options,
grid barriers and the precisions kept wider than 16-bit inputs) one: the categorical
log-sum-exp kept in bfloat16 for the backward (a vocabulary of thousands shows it).
A barrier one arrival short in the chain was dropped: the threaded interpreter hung on it
rather than fail (hence --timeout). A fifth (40 over the benchmark summary, timing and unpacking,
autocast, python/'s models, the trainer's flags, IWAE) 29: summarize.targets' every verdict (a
target met, the fastest row, bfloat16 or wrong-result rows counted, the strongest baseline, the
speedup's direction, tf32x3 against cuDNN), the median, rel_err, an archive without results.json,
the chart's bars, keyword tensors under autocast, the time budget, the checkpoint and evaluation
cadences, best.pt and the final evaluation on it, metrics windows, CSV metrics, zero flag values,
a preset's rate, IWAE chunks and the log-weights' columns: each got a test. A sixth (30 over
step_flops.py, the benchmarks' cases, correctness checks and float32 modes, device_check.sh's
stages and budgets, batching, the inputs' check, the CUDA build and its ops' fakes) 23:
the floor's unit, the design shapes, a provider's own loss as its reference, fwd+bwd errors without
the gradients, mismatches timed as ok, TF32 in float32 rows or left on, the trainer benchmark's
warm-up loss, device_check's time left, budget margin, whole stage names, a hung cuda-tests rerun, one
binarisation stream per epoch, a non-finite u, the JIT build's hash and defines, a prebuilt module
for a variant, bfloat16 fakes' state dtype: each got a test. A seventh (35 over the kernels
themselves: tile masks, bfloat16 states, persistent barriers and the reverse time index,
backward terms, TF32 passes, the distributions' masks and stable forms, the emulator's rounding)
9: the Triton chain's bfloat16 c and carried dc, the stepwise Triton LSTM's carried dc, the
categorical softmax as exp(l - (max + log_sum)) at float32 logits near 1e5, a zero gradient
times an infinite KL ratio (0, not NaN), LeakyReLU's gradient at exactly 0 in the Triton and the
CUDA chains, the emulator's bfloat16 ties rounded away from zero, a forward chain barrier that
did not wait (killed on one run, not the next: the concurrent threads' interleaving; a slowed
program makes it certain): each got a test. The LSTM's forward and backward barriers that did not
wait were added after it, killed with round 4's barrier-less LSTM forward by a slowed program
(test_lstm_persistent_multi_program_grid killed all three too, but only as its threads interleave).
A column mask one past D in the distribution kernels was dropped: its out-of-bounds stores
crashed pytest (SIGABRT) rather than fail a test; a padding-column sum replaced it. An eighth (55
over bad input and dispatch: the ops' shape, dtype, device and mask checks, "auto" and explain, the
.npz and IDX files' checks, checkpoints' version and model configuration, the commands' flags) 36:
ndim and min_ndim checks (a deep unpacking error matched "x"), shapes compared by size, a mask on
another device or not a tensor, an implementation's unsupported() hook, explain's unknown op, the
LSTM's weight_hh rows, biases, gates_x width and h batch (broadcast), the chain's gates_x, eps steps,
weight_iz and weight_g2 rows, state batch and mixed dtypes, bool, negative and misshapen categorical
targets, bernoulli's mask, NaN in .npz reported as float32 overflow, float32 overflow itself, tokens
equal to vocab_size or negative, speech frame sizes, negative Bernoulli values, a wrong IDX magic
where the name demands no kind, 28x27 images, images without their labels, limit 0, another format
version, another model configuration, a prompt filling all steps, a bool dimension in python/'s VAEs
(explain's compiling check only named the wrong tests: test_compile kills it): each got a test."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REFERENCE_TESTS = ("tests/test_ops_reference.py", "tests/test_model.py", "tests/test_lstm_native.py",
                   "tests/test_properties.py")
TRAIN_TESTS = ("tests/test_train.py",)
DATA_TESTS = ("tests/test_data.py",)
CHAIN_TESTS = ("tests/test_triton_chain.py",)
CHAIN_LN_TESTS = ("tests/test_triton_chain_ln.py",)
EMULATION_TESTS = ("tests/test_cuda_emulation.py", "tests/test_cuda_emulation_chain.py")
LSTM_TESTS = ("tests/test_triton_lstm.py",)
DISTRIBUTION_TESTS = ("tests/test_triton_distributions.py",)
DISTRIBUTED_TESTS = ("tests/test_distributed.py",)
DISTRIBUTED_UNIT_TESTS = ("tests/test_distributed.py::test_distributed_helpers_without_a_process_group",
                          "tests/test_distributed.py::test_a_rank_checks_the_split_and_seeds_its_own_noise_without_a_"
                          "process_group")
WAV_TESTS = ("tests/test_data_wav.py",)
TEXT_TESTS = ("tests/test_data_text.py",)
OPS_TESTS = ("tests/test_ops_reference.py", "tests/test_cuda_dispatch.py")
PYTHON_VAE_TESTS = ("tests/test_python_vaes.py",)
BENCH = "tests/test_benchmarks_smoke.py::"
SUMMARY_TESTS = (BENCH + "test_summary_verdicts",)
BENCH_COMMON_TESTS = (BENCH + "test_bench_median_quantiles_and_rel_err",)
UNPACK_TESTS = (BENCH + "test_unpack_device_run_refuses_an_archive_without_results",)
PLOT_TESTS = (BENCH + "test_plot_draws_successful_rows_with_their_spread",)
AUTOCAST_TESTS = ("tests/test_autocast.py::test_keyword_tensors_are_cast_and_count_like_positional_ones",)
PYTHON_VAE_REF_TESTS = ("tests/test_python_vaes.py::test_matches_plain_per_step_model_values_log_weights_and_grads",)
TRAIN = "tests/test_train.py::"
CADENCE_TESTS = (TRAIN + "test_checkpoint_and_evaluation_cadences",)
BEST_CHECKPOINT_TESTS = (TRAIN + "test_best_checkpoint_is_the_lowest_validation_bound_and_the_final_evaluation_"
                         "uses_it",)
IWAE_TESTS = ("tests/test_model.py::test_iwae_chunks_draw_exactly_k_samples_and_log_weights_keep_each_sequences_"
              "own",)
PYTHON_VAE_PAD_TESTS = ("tests/test_python_vaes.py::test_padded_batch_equals_the_truncated_sequences",)
PYTHON_VAE_GEN_TESTS = ("tests/test_python_vaes.py::test_generation_draws_z_from_the_prior_with_its_spread",)
STEP_FLOPS_TESTS = (BENCH + "test_step_flops_split_the_timit_step",)
BENCH_CASE_TESTS = (BENCH + "test_design_cases_are_the_shapes_their_labels_and_the_presets_name",)
BENCH_CHECK_TESTS = (BENCH + "test_a_provider_computing_something_else_is_caught",)
BENCH_PRECISION_TESTS = (BENCH + "test_float32_modes_set_and_restore_the_tf32_switches",)
BENCH_TRAINER_LOSS_TESTS = (BENCH + "test_trainer_row_loss_is_the_timed_steps_mean",)
DEVICE_CHECK_TESTS = (BENCH + "test_device_check_stage_selection_and_budgets",)
JIT_BUILD_TESTS = ("tests/test_cuda_compile.py::test_jit_build_gets_a_build_of_its_own_per_variant_and_source",)
CUDA_OPCHECK_TESTS = ("tests/test_cuda_emulation_compile.py::test_cuda_custom_ops_fake_outputs_in_bfloat16",)
CHAIN = "tests/test_triton_chain.py::"
CHAIN_BARRIER_TESTS = (CHAIN + "test_persistent_barriers_hold_back_programs_ahead_of_a_slow_one",
                       CHAIN + "test_persistent_multi_program_grid")
CHAIN_HALF_TESTS = (CHAIN + "test_bfloat16_cell_state_and_its_gradient_carried_in_float32",
                    CHAIN + "test_float16_no_worse_than_torch", CHAIN + "test_bfloat16_no_worse_than_torch")
LSTM = "tests/test_triton_lstm.py::"
LSTM_BARRIER_TESTS = (LSTM + "test_lstm_persistent_barriers_hold_back_programs_ahead_of_a_slow_one",
                      LSTM + "test_lstm_persistent_multi_program_grid")
DIST = "tests/test_triton_distributions.py::"
EMU_CHAIN_TESTS = ("tests/test_cuda_emulation_chain.py::test_cuda_emulated_chain_matches_torch",)
EMU_LSTM_TESTS = ("tests/test_cuda_emulation.py::test_cuda_emulated_lstm_matches_torch",)
OPS_REF = "tests/test_ops_reference.py::"
OPS_ARG_TESTS = (OPS_REF + "test_bad_input_names_the_argument", OPS_REF + "test_explicit_unavailable_backend_raises_with_"
                 "reason", OPS_REF + "test_auto_on_cpu_picks_torch_and_says_why", OPS_REF + "test_an_implementations_"
                 "unsupported_hook_is_asked", "tests/test_cuda_dispatch.py")
CLI = "tests/test_checkpoint_cli.py::"
CLI_CHECK_TESTS = (CLI + "test_bad_input_is_one_clear_line", CLI + "test_data_other_than_the_runs_is_refused",
                   CLI + "test_a_model_this_command_does_not_know_is_named", CLI + "test_bad_sampling_flags_are_one_"
                   "clear_line", CLI + "test_bad_prefix_flags_are_one_clear_line",
                   CLI + "test_a_checkpoint_whose_model_config_differs_is_refused",
                   CLI + "test_a_prompt_must_leave_steps_to_generate")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str        # relative to the repository root
    old: str         # must occur exactly once in the file
    new: str
    tests: tuple     # pytest paths (with -k selections where given) that must fail


MUTANTS = (
    # the plain-PyTorch references
    Mutant("kl_sign", "zf_kernels/ops/distributions/naive.py", "0.5 * (lp - lq + exp(lq - lp)", "0.5 * (lq - lp + exp(lq - lp)",
           REFERENCE_TESTS),
    Mutant("gaussian_nll_without_log_2pi", "zf_kernels/ops/distributions/naive.py", "0.5 * (LOG_2PI + lv +",
           "0.5 * (lv +", REFERENCE_TESTS),
    Mutant("scaled_square_grad", "zf_kernels/ops/distributions/naive.py", "return 2.0 * gr * s, -g_q",
           "return 1.9 * gr * s, -g_q", REFERENCE_TESTS),
    Mutant("reparameterize_scale", "zf_kernels/ops/distributions/naive.py", "torch.exp(0.5 * lv) * e",
           "torch.exp(0.49 * lv) * e", REFERENCE_TESTS),
    Mutant("categorical_ignores_mask", "zf_kernels/ops/distributions/naive.py",
           "    return _finish(nll, mask, logits.dtype)", "    return _finish(nll, None, logits.dtype)",
           REFERENCE_TESTS),
    Mutant("lstm_gate_order", "zf_kernels/ops/lstm/naive.py", "    i, f, g, o = gates.chunk(4, dim=-1)",
           "    f, i, g, o = gates.chunk(4, dim=-1)", REFERENCE_TESTS),
    Mutant("lstm_drops_bias_hh", "zf_kernels/ops/lstm/naive.py",
           "bias = bias_hh if bias is None else bias + bias_hh", "bias = bias_hh if bias is None else bias",
           REFERENCE_TESTS),
    Mutant("chain_without_param_clamp", "zf_kernels/ops/recurrence/naive.py",
           "params = clamp_ref(torch.addmm(bias_q2, a, weight_q2.t()), PARAM_CLAMP)",
           "params = torch.addmm(bias_q2, a, weight_q2.t())", REFERENCE_TESTS),
    # the references' clamp convention: the closed interval, not torch.clamp's (0 at the bounds
    # from torch 2.14 on; the tests' min_norm_torch_clamp fixture gives CI's torch that rule)
    Mutant("reference_clamp_open_interval", "zf_kernels/ops/activations/naive.py",
           "inside = (x >= -bound) & (x <= bound)", "inside = (x > -bound) & (x < bound)",
           ("tests/test_triton_leaky_clamp.py::test_values_of_the_docstring_and_the_conventions",)),
    Mutant("reference_clamp_inherits_torch_clamp", "zf_kernels/ops/activations/naive.py",
           "return torch.where(inside, x, torch.clamp(x, -bound, bound).detach())",
           "return torch.clamp(x, -bound, bound)",
           ("tests/test_triton_leaky_clamp.py::test_values_of_the_docstring_and_the_conventions",)),
    Mutant("chain_reference_param_clamp_inherits_torch_clamp", "zf_kernels/ops/recurrence/naive.py",
           "params = clamp_ref(torch.addmm(bias_q2, a, weight_q2.t()), PARAM_CLAMP)",
           "params = torch.clamp(torch.addmm(bias_q2, a, weight_q2.t()), -PARAM_CLAMP, PARAM_CLAMP)",
           ("tests/test_triton_chain.py::test_clamps_pass_the_gradient_at_their_ends",)),
    Mutant("chain_ln_reference_gen_clamp_inherits_torch_clamp", "zf_kernels/ops/recurrence/naive.py",
           "gain, bias = clamp_ref(gen, COND_CLAMP).chunk(2, dim=-1)",
           "gain, bias = torch.clamp(gen, -COND_CLAMP, COND_CLAMP).chunk(2, dim=-1)",
           ("tests/test_triton_chain_ln.py::test_triton_clamps_pass_the_gradient_at_their_ends",)),
    Mutant("chain_ln_gain_without_one", "zf_kernels/ops/recurrence/naive.py",
           "h, c = _lstm_cell(gx_t + n * (1.0 + gain) + bias, c)", "h, c = _lstm_cell(gx_t + n * gain + bias, c)",
           CHAIN_LN_TESTS),
    # the model and its bounds
    Mutant("aux_cost_trains_the_backward_lstm", "zf_kernels/model.py", "aux = self._aux_cost(b.detach(),",
           "aux = self._aux_cost(b,", ("tests/test_model.py",)),
    Mutant("aux_mean_without_tanh", "zf_kernels/model.py", "self._aux_cost(b.detach(), torch.tanh(mu_a),",
           "self._aux_cost(b.detach(), mu_a,", ("tests/test_model.py",)),
    Mutant("prior_reads_h_t", "zf_kernels/model.py",
           "h_prev = torch.cat([h0.unsqueeze(0).to(chain.h.dtype), chain.h[:-1]], 0)", "h_prev = chain.h",
           ("tests/test_model.py",)),
    Mutant("bwd_cost_always_on", "zf_kernels/model.py", "        aux_on = aux_weight > 0", "        aux_on = True",
           ("tests/test_model.py",)),
    Mutant("iwae_wrong_normaliser", "zf_kernels/bounds.py", "- math.log(k)).to(logw.dtype)",
           "- math.log(k + 1)).to(logw.dtype)", ("tests/test_model.py",)),
    # sequences and evaluation
    Mutant("flip_ignores_lengths", "zf_kernels/sequences.py",
           "    return torch.where(t < lengths, lengths - 1 - t, t)", "    return torch.where(t < lengths, T - 1 - t, t)",
           ("tests/test_model.py",)),
    Mutant("first_input_is_the_first_target", "zf_kernels/sequences.py", "    return torch.cat([start, y[:-1]], 0)",
           "    return torch.cat([y[:1], y[:-1]], 0)", ("tests/test_model.py",)),
    Mutant("per_recording_wrong_count", "zf_kernels/evaluate.py",
           '            out[f"{k}_per_recording"] = sums[k] / len(recordings)',
           '            out[f"{k}_per_recording"] = sums[k] / max(1, len(recordings) - 1)', ("tests/test_evaluate.py",)),
    Mutant("evaluation_limit_scores_whole_batches", "zf_kernels/evaluate.py",
           "                keep = max_sequences - n_seq   # the last batch cut to the limit",
           "                keep = y.shape[1]", ("tests/test_evaluate.py",)),
    Mutant("windows_drop_partly_padded_slices", "zf_kernels/evaluate.py",
           "    keep = mask.any(0)            # slices with a valid step",
           "    keep = mask.all(0)            # slices with a valid step", ("tests/test_evaluate.py",)),
    # sampling, binarisation, resume
    Mutant("sample_z_ignores_temperature", "zf_kernels/model.py",
           "            z = mu_p + torch.exp(0.5 * logvar_p) * randn(batch_size, self.z_dim) * temperature",
           "            z = mu_p + torch.exp(0.5 * logvar_p) * randn(batch_size, self.z_dim)", ("tests/test_model.py",)),
    Mutant("sample_frame_scale", "zf_kernels/model.py",
           "                mean, u = mu, mu + torch.exp(0.5 * logvar) * randn(*mu.shape) * temperature",
           "                mean, u = mu, mu + torch.exp(logvar) * randn(*mu.shape) * temperature", ("tests/test_model.py",)),
    Mutant("binarize_ignores_intensity", "zf_kernels/data/batching.py",
           "    return (rng.random(intensities.shape) < intensities).astype(np.float32)",
           "    return (rng.random(intensities.shape) < 0.5).astype(np.float32)", DATA_TESTS),
    Mutant("resume_draws_new_noise", "zf_kernels/train.py", '        self.eps_gen.set_state(saved_noise)',
           "        pass", TRAIN_TESTS),
    # the trainer's schedules and update
    Mutant("kl_weight_past_one", "zf_kernels/training/schedules.py", "self.kl = min(self.kl + self.kl_step, 1.0)",
           "self.kl = min(self.kl + self.kl_step, 1.1)", TRAIN_TESTS),
    Mutant("aux_falls_twice_as_fast", "zf_kernels/training/schedules.py",
           "self.aux = max(self.aux - self.aux_step, self.aux_end)",
           "self.aux = max(self.aux - 2 * self.aux_step, self.aux_end)", TRAIN_TESTS),
    Mutant("plateau_patience_off_by_one", "zf_kernels/training/schedules.py", "if self.bad < self.patience:",
           "if self.bad <= self.patience:", TRAIN_TESTS),
    Mutant("plateau_below_lr_min", "zf_kernels/training/schedules.py",
           'new = max(group["lr"] * self.decay, min(self.lr_min, group["lr"]))', 'new = group["lr"] * self.decay',
           TRAIN_TESTS),
    Mutant("plateau_raises_a_rate_under_the_floor", "zf_kernels/training/schedules.py",
           'new = max(group["lr"] * self.decay, min(self.lr_min, group["lr"]))',
           'new = max(group["lr"] * self.decay, self.lr_min)', TRAIN_TESTS),
    Mutant("validate_accepts_lr_min_above_lr", "zf_kernels/training/presets.py", "    if cfg.lr_min > cfg.lr:",
           "    if False:", (TRAIN + "test_cli_rejects_bad_flags",)),
    Mutant("resume_ignores_changed_settings", "zf_kernels/training/presets.py",
           "for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]",
           "for k in now if False]", (TRAIN + "test_cli_resume_continues_the_run_as_configured_and_refuses_other_settings",)),
    Mutant("resume_ignores_the_checkpoints_settings", "zf_kernels/train.py",
           "    merged |= {k: v for k, v in flags.items() if k != \"preset\"}",
           "    merged = {k: v for k, v in flags.items() if k != \"preset\"}",
           (TRAIN + "test_cli_resume_continues_the_run_as_configured_and_refuses_other_settings",
            TRAIN + "test_resumed_configuration_comes_from_rank_0")),
    Mutant("resumed_configuration_read_on_every_rank", "zf_kernels/train.py",
           "    kind, saved = ctx.broadcast_object(payload)", "    kind, saved = payload or (\"ok\", None)",
           (TRAIN + "test_resumed_configuration_comes_from_rank_0",)),
    Mutant("new_run_keeps_an_old_best_checkpoint", "zf_kernels/train.py",
           'for path in (self.metrics.path, self.out / "best.pt", self.out / "last.pt"):',
           "for path in (self.metrics.path,):", (TRAIN + "test_a_new_run_in_an_old_runs_folder_does_not_use_its_checkpoints",)),
    Mutant("budget_at_an_epochs_end_skips_it", "zf_kernels/train.py",
           "                if self.next_batch >= n_batches:   # the epoch ran to its end",
           "                if self.next_batch >= n_batches and not self.out_of_budget():   # the epoch ran to its end",
           (TRAIN + "test_a_stop_at_an_epochs_end_validates_it_and_resumes_exactly",)),
    Mutant("logged_weights_of_the_next_step", "zf_kernels/train.py",
           "        kl_w, aux_w = self.weights.last_used()", "        kl_w, aux_w = self.weights.kl, self.weights.aux",
           (TRAIN + "test_a_window_of_skipped_steps_has_no_averages_and_weights_are_the_steps_own",)),
    Mutant("empty_window_logs_zero", "zf_kernels/train.py",
           'rec |= {k: w[k] / n if n else None for k in TERMS + ("grad_norm",)}',
           'rec |= {k: w[k] / max(n, 1) for k in TERMS + ("grad_norm",)}',
           (TRAIN + "test_a_window_of_skipped_steps_has_no_averages_and_weights_are_the_steps_own",)),
    Mutant("epoch_end_validates_a_validated_step", "zf_kernels/train.py",
           "                    if self.validated_step != self.step:", "                    if True:", TRAIN_TESTS),
    Mutant("no_gradient_clip", "zf_kernels/train.py",
           "grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)",
           "grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1e9)", TRAIN_TESTS),
    Mutant("non_finite_gradient_applied", "zf_kernels/train.py",
           '        if not torch.isfinite(grad_norm):\n            self.skipped["non_finite_grad"] += 1',
           '        if False:\n            self.skipped["non_finite_grad"] += 1', TRAIN_TESTS),
    # data
    Mutant("npz_shift_checks_padding", "zf_kernels/data/npz.py", "        bad &= mask[:, 1:] > 0",
           "        bad &= mask[:, 1:] >= 0", DATA_TESTS),
    Mutant("npz_shift_unchecked", "zf_kernels/data/npz.py", "    if bad.any():\n        row, t",
           "    if False:\n        row, t", DATA_TESTS),
    # Triton kernels: the clamps' closed intervals (the tests' put_on_clamp_ends)
    Mutant("triton_leaky_clamp_grad_open_low", "zf_kernels/ops/_triton_common.py",
           "return tl.where((y >= -hi) & (y <= hi), g, zero)",
           "return tl.where((y > -hi) & (y <= hi), g, zero)", CHAIN_TESTS),
    Mutant("triton_chain_mu_clamp_open", "zf_kernels/ops/recurrence/triton.py",
           "ok_mu = (p_mu >= -PARAM_BOUND)", "ok_mu = (p_mu > -PARAM_BOUND)", CHAIN_TESTS),
    Mutant("triton_chain_ln_gain_clamp_open", "zf_kernels/ops/recurrence/triton_ln.py",
           "ok_g = (gain_pre >= -GEN_BOUND)", "ok_g = (gain_pre > -GEN_BOUND)", CHAIN_LN_TESTS),
    # Triton kernels: gradients and numerics
    Mutant("triton_lstm_forget_gate_grad", "zf_kernels/ops/lstm/triton.py",
           "tl.store(dgp + H, (dc * c_prev * f * (1.0 - f)).to(dty), mask=m2)",
           "tl.store(dgp + H, (dc * c_prev * f).to(dty), mask=m2)", LSTM_TESTS),
    Mutant("triton_lstm_cell_grad_without_tanh_slope", "zf_kernels/ops/lstm/triton.py",
           "    dc = dc + dh * o * (1.0 - tc * tc)", "    dc = dc + dh * o", LSTM_TESTS),
    Mutant("triton_chain_forget_gate_grad", "zf_kernels/ops/recurrence/triton.py",
           "tl.store(dp + H, (d_f * f * (1.0 - f)).to(ty), mask=m2)", "tl.store(dp + H, (d_f * f).to(ty), mask=m2)",
           CHAIN_TESTS),
    Mutant("triton_chain_cell_grad_skips_f", "zf_kernels/ops/recurrence/triton.py",
           "tl.store(DC + st, (dc * f).to(DC.dtype.element_ty), mask=m2)",
           "tl.store(DC + st, (dc).to(DC.dtype.element_ty), mask=m2)", CHAIN_TESTS),
    Mutant("triton_kl_constant", "zf_kernels/ops/distributions/triton.py",
           "kl = lp - lq + tl.exp(lq - lp) + r * r - 1.0", "kl = lp - lq + tl.exp(lq - lp) + r * r - 0.99",
           DISTRIBUTION_TESTS),
    Mutant("triton_log1p_small_argument", "zf_kernels/ops/distributions/triton.py",
           "return tl.where(small, e, tl.log(u)", "return tl.where(small, 0.0 * e, tl.log(u)", DISTRIBUTION_TESTS),
    Mutant("triton_logsumexp_inf_minus_inf", "zf_kernels/ops/distributions/triton.py",
           'm_ref = tl.where(m_new == float("-inf"), 0.0, m_new)', "m_ref = m_new", DISTRIBUTION_TESTS),
    # csrc/ in its CPU emulation
    Mutant("cuda_lstm_forget_gate_grad", "csrc/lstm_kernels.cu",
           "z[H] = zf_narrow<S>(dc * c_prev * f * (A(1) - f));", "z[H] = zf_narrow<S>(dc * c_prev * f);",
           EMULATION_TESTS),
    Mutant("cuda_lstm_cell_grad_skips_f", "csrc/lstm_kernels.cu", "      dcs[e] = dc * f;", "      dcs[e] = dc;",
           EMULATION_TESTS),
    Mutant("cuda_chain_grad_eps", "csrc/chain_kernels.cu", "P.grad_eps[o] = zf_narrow<T>(dz * sd);",
           "P.grad_eps[o] = zf_narrow<T>(dz);", EMULATION_TESTS),
    Mutant("cuda_chain_mu_clamp_open", "csrc/chain_kernels.cu", "ok[0] = (pm >= A(-8) && pm <= A(8)) ? 1 : 0;",
           "ok[0] = (pm > A(-8) && pm <= A(8)) ? 1 : 0;", EMULATION_TESTS),
    Mutant("cuda_leaky_clamp_grad_open", "csrc/chain_kernels.cu", "  if (!(y >= T(-3) && y <= T(3))) return T(0);",
           "  if (!(y > T(-3) && y <= T(3))) return T(0);", EMULATION_TESTS),
    Mutant("cuda_3xtf32_drops_a_term", "csrc/zf_persistent.h", "    zf_mma_tf32(acc, a_small, b_big);\n", "",
           ("tests/test_cuda_emulation_tf32.py",)),
    # ---- third round: data parallelism, the loaders, sampling, checkpoints, the ops' checks, python/
    # DDP (one torchrun launch per mutant: ~30 s each; the helpers' own test alone where it suffices)
    Mutant("ddp_loss_not_scaled_by_rank_share", "zf_kernels/train.py",
           "if not self._update(loss * (self.dist.world_size * n_rank / B)):", "if not self._update(loss):",
           DISTRIBUTED_TESTS),
    Mutant("ddp_every_rank_takes_the_first_noise", "zf_kernels/train.py",
           'return {"eps": eps[:, part].contiguous()}',
           'return {"eps": eps[:, :part.stop - part.start].contiguous()}', DISTRIBUTED_TESTS),
    Mutant("ddp_skip_needs_two_ranks", "zf_kernels/train.py", "        if stats[0] > 0:",
           "        if stats[0] > 1:", DISTRIBUTED_TESTS),
    Mutant("ddp_window_by_rank_batch", "zf_kernels/train.py", "            self.window[k] += v / B",
           "            self.window[k] += v / n_rank", DISTRIBUTED_TESTS),
    Mutant("ddp_every_rank_logs", "zf_kernels/train.py",
           "self.log = log if self.is_main else (lambda *a, **k: None)", "self.log = log", DISTRIBUTED_TESTS),
    Mutant("ddp_batch_check_ignores_a_short_split", "zf_kernels/train.py",
           "smallest = self.cfg.batch_size if self.drop_last else len(self.data.train)",
           "smallest = self.cfg.batch_size", DISTRIBUTED_UNIT_TESTS),
    Mutant("ddp_noise_generator_same_on_every_rank", "zf_kernels/train.py",
           "seeded_generator(2, self.cfg.seed, self.step, self.dist.rank)",
           "seeded_generator(2, self.cfg.seed, self.step)", DISTRIBUTED_UNIT_TESTS),
    Mutant("ddp_shard_ignores_the_remainder", "zf_kernels/training/distributed.py",
           "        lo = r * base + min(r, extra)", "        lo = r * base", DISTRIBUTED_UNIT_TESTS),
    # WAV folders
    Mutant("wav_zero_sample_rate_accepted", "zf_kernels/data/wav.py",
           "    if channels < 1 or rate < 1:\n        raise ValueError(f\"path {path}: {channels} channels at {rate} Hz "
           "(expected >= 1 channel and a positive rate)\")\n    if bits % 8",
           "    if channels < 1:\n        raise ValueError(f\"path {path}: {channels} channels at {rate} Hz "
           "(expected >= 1 channel and a positive rate)\")\n    if bits % 8", WAV_TESTS),
    Mutant("wav_hidden_files_read", "zf_kernels/data/wav.py",
           'if f.lower().endswith(AUDIO_SUFFIX) and not f.startswith(".")}', "if f.lower().endswith(AUDIO_SUFFIX)}",
           WAV_TESTS),
    Mutant("wav_targets_not_shifted", "zf_kernels/data/wav.py",
           "x[i:i + full] = frames[1:full * L + 1].reshape(full, L, D)",
           "x[i:i + full] = frames[:full * L].reshape(full, L, D)", WAV_TESTS),
    Mutant("wav_stats_from_every_split", "zf_kernels/data/wav.py",
           'mean, std = _global_stats([built["train"][1]], [built["train"][2]])',
           "mean, std = _global_stats([b[1] for b in built.values()], [b[2] for b in built.values()])", WAV_TESTS),
    # text
    Mutant("text_vocab_counts_the_special_tokens", "zf_kernels/data/text.py",
           "    counts.pop(EOS, None), counts.pop(UNK, None)\n", "", TEXT_TESTS),
    Mutant("text_vocab_ties_by_first_occurrence", "zf_kernels/data/text.py",
           "key=lambda w: (-counts[w], w)", "key=lambda w: -counts[w]", TEXT_TESTS),
    Mutant("text_holdout_leaves_train_empty", "zf_kernels/data/text.py", "            if len(train) <= n:",
           "            if len(train) < n:", TEXT_TESTS),
    Mutant("text_unknown_word_is_eos", "zf_kernels/data/text.py", "tokens = [ids.get(w, 1) for w in line] + [0]",
           "tokens = [ids.get(w, 0) for w in line] + [0]", TEXT_TESTS),
    # synthetic data and MNIST IDX files
    Mutant("synthetic_never_full_length", "zf_kernels/data/synthetic.py",
           "lengths = rng.integers(max(2, T // 2), T + 1, size=n)", "lengths = rng.integers(max(2, T // 2), T, size=n)",
           DATA_TESTS),
    Mutant("synthetic_test_overlaps_valid", "zf_kernels/data/synthetic.py", '"test": (n_train + n_valid, n)}',
           '"test": (n_train, n_train + n_test)}', DATA_TESTS),
    Mutant("synthetic_switch_may_keep_the_mode", "zf_kernels/data/synthetic.py",
           "shift = rng.integers(1, n_modes, size=(n, T))", "shift = rng.integers(0, n_modes, size=(n, T))", DATA_TESTS),
    Mutant("mnist_label_ten_accepted", "zf_kernels/data/mnist.py", "if count and arr.max() > 9:",
           "if count and arr.max() > 10:", DATA_TESTS),
    Mutant("mnist_image_header_unchecked", "zf_kernels/data/mnist.py",
           "    if len(data) < header:\n", "    if False:\n", DATA_TESTS),
    # sampling Bernoulli and categorical outputs; the sampling command
    Mutant("sample_categorical_start_token_zero", "zf_kernels/model.py",
           "u = torch.full((batch_size,), self.input_dim, device=device, dtype=torch.long)",
           "u = torch.full((batch_size,), 0, device=device, dtype=torch.long)", ("tests/test_model.py",)),
    Mutant("sample_categorical_ignores_temperature", "zf_kernels/model.py",
           "mean = torch.softmax(params / max(temperature, 1e-6), -1)", "mean = torch.softmax(params, -1)",
           ("tests/test_model.py",)),
    Mutant("sample_bernoulli_greedy", "zf_kernels/model.py", "u = torch.bernoulli(mean, generator=generator)",
           "u = (mean > 0.5).to(mean.dtype)", ("tests/test_model.py",)),
    Mutant("sample_prefix_beyond_the_split", "zf_kernels/sample.py", "    if prefix > split.y.shape[1]:",
           "    if False:", ("tests/test_checkpoint_cli.py",)),
    Mutant("sample_prefix_needs_whole_sequences", "zf_kernels/sample.py",
           "(split.mask[:, :prefix] != 0).all(1))", "(split.mask != 0).all(1))", ("tests/test_checkpoint_cli.py",)),
    # checkpoints loaded back
    Mutant("trained_ignores_the_runs_dtype", "zf_kernels/trained.py",
           "model = models[cfg.model](cfg, bundle).to(dev, dtype)", "model = models[cfg.model](cfg, bundle).to(dev)",
           ("tests/test_checkpoint_cli.py",)),
    Mutant("trained_without_the_runs_autocast", "zf_kernels/trained.py",
           'return Trained(model, cfg, bundle, ckpt, state["step"], dev, amp_dtype)',
           'return Trained(model, cfg, bundle, ckpt, state["step"], dev, None)', ("tests/test_checkpoint_cli.py",)),
    Mutant("evaluate_limit_cuts_valid_for_train", "zf_kernels/evaluate.py",
           '{"train_limit" if split == "train" else "eval_limit": limit}', '{"eval_limit": limit}',
           ("tests/test_checkpoint_cli.py",)),
    # the ops' argument checks and "auto"
    Mutant("check_mask_accepts_a_wider_mask", "zf_kernels/ops/_checks.py", "    if shape != torch.Size(lead_shape):",
           "    if shape is None:", OPS_TESTS),
    Mutant("check_same_ignores_devices", "zf_kernels/ops/_checks.py", "        if t.device != t0.device:",
           "        if False:", OPS_TESTS),
    Mutant("explain_accepts_an_unknown_backend", "zf_kernels/ops/_dispatch.py",
           '    if backend not in BACKENDS:\n        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")\n'
           '    if compiling', '    if compiling',
           OPS_TESTS),
    Mutant("triton_interpreter_takes_cuda_tensors", "zf_kernels/ops/_dispatch.py",
           "        if devices == {\"cuda\"} and _interpreting():", "        if False:", OPS_TESTS),
    # python/: the example VAEs' output head and start input
    Mutant("vae_categorical_start_token_zero", "python/common.py",
           "return torch.full((batch_size,), self.input_dim, device=p.device, dtype=torch.long)",
           "return torch.full((batch_size,), 0, device=p.device, dtype=torch.long)", PYTHON_VAE_TESTS),
    Mutant("vae_categorical_ignores_temperature", "python/common.py",
           "mean = torch.softmax(params / max(temperature, 1e-6), -1)", "mean = torch.softmax(params, -1)",
           PYTHON_VAE_TESTS),
    Mutant("vae_bernoulli_greedy", "python/common.py", "return torch.bernoulli(mean, generator=generator), mean",
           "return (mean > 0.5).to(mean.dtype), mean", PYTHON_VAE_TESTS),
    # ---- fourth round: the kernels' launch options, grid barriers, precisions kept wider than the input
    Mutant("launch_without_pinned_options", "zf_kernels/ops/activations/triton.py",
           "num_warps=4,\n                                              **common.LAUNCH_OPTIONS)", "num_warps=4)",
           ("tests/test_triton_launches.py",)),
    Mutant("launch_misspelt_option", "zf_kernels/ops/activations/triton.py", "BLOCK=_BLOCK, num_warps=4,",
           "BLOCK=_BLOCK, num_warp=4,", ("tests/test_triton_launches.py",)),
    Mutant("triton_lstm_forward_without_barrier", "zf_kernels/ops/lstm/triton.py",
           "ok = grid_barrier(counter, (s + 1) * n_h, ok, flag, MAX_POLLS)", "ok = ok", LSTM_BARRIER_TESTS),
    Mutant("barrier_timeout_unchecked", "zf_kernels/ops/_persistent.py", "torch._assert_async(sync[-1] == 0,",
           "torch._assert_async(sync[-1] >= 0,", ("tests/test_triton_lstm.py",)),
    Mutant("triton_chain_ln_unbiased_variance", "zf_kernels/ops/recurrence/triton_ln.py",
           "rstd = 1.0 / tl.sqrt(m2sum / total + EPS_LN)", "rstd = 1.0 / tl.sqrt(m2sum / (total - 1) + EPS_LN)",
           CHAIN_LN_TESTS),
    Mutant("triton_lstm_cell_state_in_input_dtype", "zf_kernels/ops/lstm/triton.py",
           "c_all = torch.empty((T + 1, B, H), dtype=acc, device=x.device)",
           "c_all = torch.empty((T + 1, B, H), dtype=x.dtype, device=x.device)", LSTM_TESTS),
    Mutant("triton_categorical_stats_in_input_dtype", "zf_kernels/ops/distributions/triton.py",
           "stats = torch.empty(2, n, dtype=_acc_torch_dtype(logits), device=logits.device)",
           "stats = torch.empty(2, n, dtype=logits.dtype, device=logits.device)",
           ("tests/test_triton_distributions.py::test_categorical_bfloat16_large_vocabulary_gradient_to_a_rounding",)),
    Mutant("cuda_cell_state_in_bfloat16", "zf_kernels/ops/_precision.py",
           "return torch.float32 if dtype == torch.bfloat16 else dtype", "return dtype",
           ("tests/test_cuda_emulation_bf16.py",)),
    Mutant("dot_precision_ignores_torch_tf32_switch", "zf_kernels/ops/_precision.py",
           'return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"', 'return "tf32"',
           ("tests/test_dot_precision.py",)),
    # ---- fifth round: the benchmark verdicts, autocast's casts, python/'s bounds, the trainer's flags, IWAE
    # benchmarks/: what a summary claims (a target met, the strongest baseline, every op measured)
    Mutant("summary_target_met_when_slower", "benchmarks/summarize.py",
           '(" - met" if b["ms"] <= limit else "")', '(" - met" if b["ms"] >= limit else "")', SUMMARY_TESTS),
    Mutant("summary_best_is_the_slowest", "benchmarks/summarize.py",
           'return min(found, key=lambda r: r["ms"]) if found else None',
           'return max(found, key=lambda r: r["ms"]) if found else None', SUMMARY_TESTS),
    Mutant("summary_speedup_inverted", "benchmarks/summarize.py", 'sp = base["ms"] / b["ms"]',
           'sp = b["ms"] / base["ms"]', SUMMARY_TESTS),
    Mutant("summary_bfloat16_meets_the_float32_target", "benchmarks/summarize.py",
           'OURS_TRAIN, ("float32", "tf32", "tf32x3"))', 'OURS_TRAIN, ("float32", "tf32", "tf32x3", "bfloat16"))',
           SUMMARY_TESTS),
    Mutant("summary_baseline_without_its_tf32_rows", "benchmarks/summarize.py", 'BASELINE_TRAIN, ("float32", "tf32"))',
           'BASELINE_TRAIN, ("float32",))', SUMMARY_TESTS),
    Mutant("summary_counts_a_failed_row", "benchmarks/summarize.py",
           'return r if r is not None and r.get("status") == "ok" and r.get("ms") else None',
           'return r if r is not None and r.get("ms") else None', SUMMARY_TESTS),
    Mutant("summary_tf32x3_lstm_against_a_missing_cudnn_row", "benchmarks/summarize.py",
           '"float32" if dt == "tf32x3" else dt', "dt", SUMMARY_TESTS),
    Mutant("summary_lstm_speedup_inverted", "benchmarks/summarize.py", 'sp = c["ms"] / t["ms"]',
           'sp = t["ms"] / c["ms"]', SUMMARY_TESTS),
    Mutant("ops_coverage_ignores_ops_without_rows", "benchmarks/summarize.py",
           'missing = [f"- {op}: no float32 fwd+bwd row at all" for op in ops if op not in seen]', "missing = []",
           (BENCH + "test_ops_coverage_names_what_each_case_lacks",)),
    Mutant("ops_coverage_counts_failed_rows", "benchmarks/summarize.py",
           'for r in ops_rows if r.get("status") == "ok" and r.get("ms")}', 'for r in ops_rows if r.get("ms")}',
           (BENCH + "test_ops_coverage_names_what_each_case_lacks",)),
    Mutant("bench_median_is_the_mean", "benchmarks/common.py", "return Timing(_quantile(times, 0.5),",
           "return Timing(sum(times) / len(times),", BENCH_COMMON_TESTS),
    Mutant("bench_rel_err_of_the_last_output_only", "benchmarks/common.py", "        worst = max(worst, e)",
           "        worst = e", BENCH_COMMON_TESTS),
    Mutant("bench_rel_err_broadcasts_shapes", "benchmarks/common.py",
           "        if a64.shape != b64.shape:\n            return float(\"nan\")\n", "", BENCH_COMMON_TESTS),
    Mutant("unpack_without_results_json", "benchmarks/unpack_device_run.py",
           '        if "results.json" not in files:', "        if False:", UNPACK_TESTS),
    Mutant("plot_draws_a_failed_row", "benchmarks/plot.py",
           '                if r.get("status") == "ok" and r.get("ms"):',
           '                if r.get("ms"):', PLOT_TESTS),
    Mutant("plot_error_bars_swapped", "benchmarks/plot.py",
           'lo, hi = r.get("ms_p20") or r["ms"], r.get("ms_p80") or r["ms"]',
           'lo, hi = r.get("ms_p80") or r["ms"], r.get("ms_p20") or r["ms"]', PLOT_TESTS),
    # ops under autocast: keyword tensors, the widest type
    Mutant("autocast_keyword_tensors_not_cast", "zf_kernels/ops/_autocast.py",
           "kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}", "kwargs = dict(kwargs)", AUTOCAST_TESTS),
    Mutant("autocast_widest_ignores_keyword_tensors", "zf_kernels/ops/_autocast.py",
           "floating = [a.dtype for a in itertools.chain(args, kwargs.values())", "floating = [a.dtype for a in args",
           AUTOCAST_TESTS),
    Mutant("autocast_region_from_positional_tensors_only", "zf_kernels/ops/_autocast.py",
           "    for a in itertools.chain(args, kwargs.values()):\n        if isinstance(a, torch.Tensor):\n"
           "            device_type",
           "    for a in args:\n        if isinstance(a, torch.Tensor):\n            device_type",
           AUTOCAST_TESTS),
    Mutant("autocast_casts_float64_down", "zf_kernels/ops/_autocast.py",
           "isinstance(a, torch.Tensor) and a.dtype in _CASTABLE",
           "isinstance(a, torch.Tensor) and a.is_floating_point()",
           ("tests/test_autocast.py::test_recurrences_leave_float64_alone",)),
    # python/: the example VAEs' posteriors, priors and masks
    Mutant("srnn_posterior_reads_the_inputs", "python/srnn.py", "reverse_lstm(torch.cat([d, self.embed(y)], -1)",
           "reverse_lstm(torch.cat([d, self.embed(u)], -1)", PYTHON_VAE_REF_TESTS),
    Mutant("srnn_prior_reads_z_t", "python/srnn.py", "z_prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]], 0)",
           "z_prev = z", PYTHON_VAE_REF_TESTS),
    Mutant("srnn_resq_without_the_prior_mean", "python/srnn.py", "                mu_q = mu_p + mu_q",
           "                mu_q = mu_q", PYTHON_VAE_REF_TESTS),
    Mutant("storn_prior_logvar_one", "python/storn.py",
           "mu_p, lv_p = torch.zeros_like(mu_q), torch.zeros_like(lv_q)",
           "mu_p, lv_p = torch.zeros_like(mu_q), torch.ones_like(lv_q)", PYTHON_VAE_REF_TESTS),
    Mutant("vrnn_generation_widens_the_prior", "python/vrnn.py",
           "z = ops.reparameterize(mu_p, lv_p, self.prior_noise", "z = ops.reparameterize(mu_p, lv_p + 3.0, self.prior_noise",
           PYTHON_VAE_GEN_TESTS),
    Mutant("srnn_generation_inverts_the_prior_logvar", "python/srnn.py",
           "z = ops.reparameterize(mu_p, lv_p, self.prior_noise", "z = ops.reparameterize(mu_p, -lv_p, self.prior_noise",
           PYTHON_VAE_GEN_TESTS),
    Mutant("storn_generation_shrinks_the_prior", "python/storn.py",
           "z = self.prior_noise(batch_size, temperature, generator)", "z = 0.1 * self.prior_noise(batch_size, temperature, generator)",
           PYTHON_VAE_GEN_TESTS),
    Mutant("vrnn_kl_ignores_the_mask", "python/vrnn.py",
           "kl = ops.gaussian_kl(mu_q, lv_q, mu_p, lv_p, mask, backend",
           "kl = ops.gaussian_kl(mu_q, lv_q, mu_p, lv_p, None, backend", PYTHON_VAE_PAD_TESTS),
    Mutant("vae_reverse_lstm_output_left_flipped", "python/common.py", "    return gather_time(out, flip)",
           "    return out", PYTHON_VAE_PAD_TESTS),
    # the trainer: stopping, cadences, the best checkpoint, metrics, flag checks, presets
    Mutant("time_budget_read_as_minutes", "zf_kernels/train.py", "self.train_seconds >= cfg.time_budget)",
           "self.train_seconds >= cfg.time_budget * 60)",
           (TRAIN + "test_time_budget_counts_training_seconds",)),
    Mutant("checkpoint_cadence_of_the_log_flag", "zf_kernels/train.py",
           "if self.step % cfg.checkpoint_every == 0 and self.next_batch < n_batches:",
           "if self.step % cfg.log_every == 0 and self.next_batch < n_batches:", CADENCE_TESTS),
    Mutant("eval_every_counts_batches_of_the_epoch", "zf_kernels/train.py",
           "if cfg.eval_every and self.step % cfg.eval_every == 0:",
           "if cfg.eval_every and self.next_batch % cfg.eval_every == 0:", CADENCE_TESTS),
    Mutant("best_checkpoint_at_every_validation", "zf_kernels/train.py",
           '        if best:\n            self.save("best.pt")', '        if True:\n            self.save("best.pt")',
           BEST_CHECKPOINT_TESTS),
    Mutant("best_by_the_nll", "zf_kernels/train.py", 'self.plateau.update(res["neg_elbo"], self.opt)',
           'self.plateau.update(res["nll"], self.opt)', BEST_CHECKPOINT_TESTS),
    Mutant("final_evaluation_of_the_last_weights", "zf_kernels/train.py",
           '            model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])\n', "",
           BEST_CHECKPOINT_TESTS),
    Mutant("metrics_window_divided_by_log_every", "zf_kernels/train.py",
           'w, n = self.window, self.window["n"]', "w, n = self.window, self.cfg.log_every",
           (TRAIN + "test_logged_terms_average_the_updates_of_the_window",)),
    Mutant("csv_metrics_written_as_json_lines", "zf_kernels/train.py",
           'report.MetricsLog(self.out / f"metrics.{ext}", cfg.metrics_format)',
           'report.MetricsLog(self.out / f"metrics.{ext}", "jsonl")',
           (TRAIN + "test_cli_smoke_run_writes_everything",)),
    Mutant("validate_accepts_zero", "zf_kernels/training/presets.py",
           "        if v is None or not 0 < v < math.inf:   # NaN and inf too",
           "        if v is None or not 0 <= v < math.inf:   # NaN and inf too", (TRAIN + "test_cli_rejects_bad_flags",)),
    Mutant("validate_accepts_nan", "zf_kernels/training/presets.py",
           "        if v is None or not 0 < v < math.inf:   # NaN and inf too",
           "        if v is None or v <= 0 or v == math.inf:   # NaN and inf too", (TRAIN + "test_cli_rejects_bad_flags",)),
    Mutant("validate_accepts_negative_weights", "zf_kernels/training/presets.py",
           "        if not 0 <= v < math.inf:", "        if not v < math.inf:", (TRAIN + "test_cli_rejects_bad_flags",)),
    Mutant("validate_accepts_lr_decay_zero", "zf_kernels/training/presets.py", "if not 0 < cfg.lr_decay <= 1:",
           "if not 0 <= cfg.lr_decay <= 1:", (TRAIN + "test_cli_rejects_bad_flags",)),
    Mutant("blizzard_preset_learning_rate", "zf_kernels/training/presets.py", "lr=3e-4, epochs=100",
           "lr=1e-3, epochs=100",
           (TRAIN + "test_presets_carry_the_authors_settings",)),
    # IWAE and the evaluation's normalisation
    Mutant("iwae_last_chunk_full_size", "zf_kernels/bounds.py",
           "self.log_weights(y, u, mask, min(chunk, k - i), generator)",
           "self.log_weights(y, u, mask, chunk, generator)", IWAE_TESTS),
    Mutant("log_weights_samples_grouped_wrongly", "zf_kernels/bounds.py",
           "return (-terms.nll.to(wide) + log_pz - log_qz).view(B, k).t()",
           "return (-terms.nll.to(wide) + log_pz - log_qz).view(k, B)", IWAE_TESTS),
    Mutant("log_weights_ignore_the_mask", "zf_kernels/bounds.py",
           'm = None if mask is None else rep(mask).to(wide)',
           "m = None", PYTHON_VAE_PAD_TESTS),
    Mutant("evaluate_counts_padded_steps", "zf_kernels/evaluate.py",
           "n_steps += int((mask != 0).sum()) if mask is not None else y.shape[0] * y.shape[1]",
           "n_steps += y.shape[0] * y.shape[1]", ("tests/test_evaluate.py",)),
    # ---- sixth round: the FLOP count, the benchmarks' cases and correctness checks, device_check.sh's
    # stage selection and budgets, batching, the CUDA extension's build and its ops' fake kernels
    # benchmarks/step_flops.py: the README's "129.9 GFLOP ... 1.94 ms at an H200's FP32 peak"
    Mutant("step_flops_step_is_the_forward", "benchmarks/step_flops.py",
           'out = {"step": counter.get_total_flops(), "fwd": fwd}', 'out = {"step": fwd, "fwd": fwd}', STEP_FLOPS_TESTS),
    Mutant("step_flops_recurrence_forward_only", "benchmarks/step_flops.py",
           "        torch.autograd.backward(flat, [torch.ones_like(t) for t in flat])\n", "", STEP_FLOPS_TESTS),
    Mutant("step_flops_floor_in_microseconds", "benchmarks/step_flops.py",
           'f"{flops[part] / (t * 1e12) * 1e3:.2f} ms"', 'f"{flops[part] / (t * 1e12) * 1e6:.2f} ms"',
           STEP_FLOPS_TESTS),
    # the benchmarks' design cases: the shapes the README's targets name
    Mutant("bench_seqmnist_case_t748", "benchmarks/bench_train_step.py", "T=784, B=32, long=True,",
           "T=748, B=32, long=True,", BENCH_CASE_TESTS),
    Mutant("bench_trainer_timit_z_dim", "benchmarks/bench_trainer.py",
           "size=dict(emb_dim=512, rnn_dim=1024, z_dim=256, mlp_dim=512, batch_size=32, z_force=False),",
           "size=dict(emb_dim=512, rnn_dim=1024, z_dim=128, mlp_dim=512, batch_size=32, z_force=False),",
           BENCH_CASE_TESTS),
    Mutant("bench_ops_lstm_t40_input_width", "benchmarks/bench_ops.py", "dict(T=40, B=32, I=512, H=1024)",
           "dict(T=40, B=32, I=256, H=1024)", BENCH_CASE_TESTS),
    Mutant("bench_ops_long_case_compiled", "benchmarks/bench_ops.py",
           'Case("lstm", "T784 B32 I64 H512", dict(T=784, B=32, I=64, H=512), long=True)',
           'Case("lstm", "T784 B32 I64 H512", dict(T=784, B=32, I=64, H=512))', BENCH_CASE_TESTS),
    # the correctness checks before timing: the providers compute the reference's numbers
    Mutant("bench_step_each_provider_its_own_reference", "benchmarks/bench_train_step.py",
           '        if provider == "torch":\n            ref["loss0"] = loss0',
           '        if True:\n            ref["loss0"] = loss0', BENCH_CHECK_TESTS),
    Mutant("bench_step_cudnn_lstm_forward_in_time", "benchmarks/bench_train_step.py",
           "lstm.bias_hh_l0, reverse=True)", "lstm.bias_hh_l0, reverse=False)", (BENCH + "test_train_rows",)),
    Mutant("bench_step_cuda_rows_of_what_auto_picks", "benchmarks/bench_train_step.py",
           '        if provider.startswith("cuda"):\n            check_cuda_recurrences(model, y)\n', "",
           (BENCH + "test_train_rows",)),
    Mutant("bench_ops_fwd_bwd_error_without_gradients", "benchmarks/bench_ops.py",
           '*((got_grad, ref[1]) if mode == "fwd+bwd" else ())', "*()", BENCH_CHECK_TESTS),
    Mutant("bench_ops_wrong_result_timed_as_ok", "benchmarks/bench_ops.py",
           'status, why = common.accuracy_status(row["dtype"], err)', 'status, why = "ok", ""', BENCH_CHECK_TESTS),
    Mutant("bench_ops_cudnn_states_not_squeezed", "benchmarks/bench_ops.py", "            h, c = h[0], c[0]\n", "            pass\n",
           (BENCH + "test_ops_rows",)),
    Mutant("bench_float32_rows_allow_tf32", "benchmarks/common.py", '_FP32_MODES = {"float32": (False, None),',
           '_FP32_MODES = {"float32": (True, None),', BENCH_PRECISION_TESTS),
    Mutant("bench_tf32_mode_left_on", "benchmarks/common.py",
           "        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved\n", "",
           BENCH_PRECISION_TESTS),
    Mutant("bench_trainer_loss_of_the_warmup_steps_too", "benchmarks/bench_trainer.py",
           "                if i == n_warm - 1:\n                    run.flush_window()", "                pass",
           BENCH_TRAINER_LOSS_TESTS),
    # benchmarks/device_check.sh: which stages run, and for how long
    Mutant("device_check_stage_ignores_time_left", "benchmarks/device_check.sh", "  lim=$(( max < l ? max : l ))",
           "  lim=$max", DEVICE_CHECK_TESTS),
    Mutant("device_check_budget_without_margin", "benchmarks/device_check.sh",
           "local budget=$(( lim > 40 ? lim - 20 : lim / 2 ))", "local budget=$lim", DEVICE_CHECK_TESTS),
    Mutant("device_check_budget_without_end_time", "benchmarks/device_check.sh",
           " ZF_BUDGET_END=$(( $(date +%s) + budget ))", "", DEVICE_CHECK_TESTS),
    Mutant("bench_budget_ignores_its_end_time", "benchmarks/common.py",
           "return left if self.end is None else min(left, self.end - time.time())", "return left",
           (BENCH + "test_budget_ends_at_zf_budget_end_if_sooner",)),
    Mutant("bench_ops_compile_step_plans_unrolled_loops", "benchmarks/bench_ops.py",
           'if provider == "compile" and case.op in SCHEDULED and args.compile == "step":',
           'if provider == "compile" and case.op in SCHEDULED and args.compile == "never":',
           (BENCH + "test_compile_step_plans_no_unrolled_loop",)),
    Mutant("device_check_stage_names_as_substrings", "benchmarks/device_check.sh",
           'if [[ ",$WANT," != *",$name,"* ]]; then', 'if [[ "$WANT" != *"$name"* ]]; then', DEVICE_CHECK_TESTS),
    Mutant("device_check_rest_reruns_hung_cuda_tests", "benchmarks/device_check.sh",
           "      WANT=$(echo \",$WANT,\" | sed 's/,cuda-tests,/,/; s/^,//; s/,$//')\n", "", DEVICE_CHECK_TESTS),
    Mutant("device_check_rest_without_timed_out_stages", "benchmarks/device_check.sh",
           'st[s[i]] ~ /^(skipped|timed-out|not-selected)$/', 'st[s[i]] ~ /^(skipped|not-selected)$/',
           DEVICE_CHECK_TESTS),
    # batching: the dynamic binarisation's noise per batch
    Mutant("binarize_same_noise_every_batch", "zf_kernels/data/batching.py",
           "seeded_generator(_BINARIZE_STREAM, seed, epoch, k)", "seeded_generator(_BINARIZE_STREAM, seed, epoch)",
           DATA_TESTS),
    # sequences: a prefix as long as the samples; inputs' values
    Mutant("prefix_of_all_steps_refused", "zf_kernels/sequences.py", "    if K > steps:", "    if K >= steps:",
           ("tests/test_model.py",)),
    Mutant("inputs_values_unchecked", "zf_kernels/sequences.py",
           "if u is not None and u.dtype.is_floating_point and not torch.isfinite(u).all():", "if False:",
           ("tests/test_model.py",)),
    # the CUDA extension's JIT build: a variant or an edit of csrc/ gets a build of its own
    Mutant("jit_build_hash_without_the_defines", "zf_kernels/ops/_cuda_ext.py",
           'f"{torch.__version__} {torch.version.cuda} sm_{arch} {flags}"',
           'f"{torch.__version__} {torch.version.cuda} sm_{arch}"', JIT_BUILD_TESTS),
    Mutant("jit_build_hash_without_the_headers", "zf_kernels/ops/_cuda_ext.py",
           '    for p in sorted(CSRC.glob("*")):', "    for p in sources():", JIT_BUILD_TESTS),
    Mutant("jit_build_defines_not_compiled", "zf_kernels/ops/_cuda_ext.py", "extra_cuda_cflags=flags + [",
           "extra_cuda_cflags=NVCC_FLAGS + [", JIT_BUILD_TESTS),
    Mutant("prebuilt_module_serves_a_variant", "zf_kernels/ops/_cuda_ext.py",
           '                raise ImportError(f"${DEFINES_ENV} asks for a build of its own")\n',
           "                pass\n",
           JIT_BUILD_TESTS),
    # the CUDA ops' fake (shape-only) kernels: the cell states in float32 for bfloat16 inputs
    Mutant("cuda_lstm_fake_cell_states_in_input_dtype", "zf_kernels/ops/lstm/cuda_op.py",
           "x.new_empty(T + 1, B, H, dtype=state_dtype(x.dtype)))", "x.new_empty(T + 1, B, H))", CUDA_OPCHECK_TESTS),
    Mutant("cuda_chain_fake_c_in_input_dtype", "zf_kernels/ops/recurrence/cuda_op.py",
           "e(T, B, H, dtype=state_dtype(gates_x.dtype))", "e(T, B, H)", CUDA_OPCHECK_TESTS),
    # ---- seventh round: the kernels themselves (tile masks, bfloat16 state, persistent schedules,
    # backward terms, TF32 passes, the distributions' masks and stable forms, the emulator's rounding)
    # the Triton chain (zf_kernels/ops/recurrence/triton.py)
    Mutant("triton_chain_bwd_drops_carried_dc", "zf_kernels/ops/recurrence/triton.py",
           "        + tl.load(DC + st, mask=m2, other=0.0).to(ACC)\n", "        + 0.0\n",
           (CHAIN + "test_schedules_match_reference",)),
    Mutant("triton_chain_lv_grad_under_the_mu_mask", "zf_kernels/ops/recurrence/triton.py",
           "tl.where(ok_lv, d_lv, 0.0)", "tl.where(ok_mu, d_lv, 0.0)", (CHAIN + "test_matches_reference",)),
    Mutant("triton_chain_gate_k_mask_closed", "zf_kernels/ops/recurrence/triton.py", "        mk = kk < KD\n",
           "        mk = kk <= KD\n", (CHAIN + "test_matches_reference",)),
    Mutant("triton_chain_fwd_barrier_does_not_wait", "zf_kernels/ops/recurrence/triton.py",
           "ok = grid_barrier(counter, (3 * t + 2) * n_prog, ok, flag, MAX_POLLS)",
           "ok = grid_barrier(counter, (3 * t + 1) * n_prog, ok, flag, MAX_POLLS)",
           CHAIN_BARRIER_TESTS),
    Mutant("triton_chain_bwd_barrier_does_not_wait", "zf_kernels/ops/recurrence/triton.py",
           "ok = grid_barrier(counter, (3 * r + 2) * n_prog, ok, flag, MAX_POLLS)",
           "ok = grid_barrier(counter, (3 * r + 1) * n_prog, ok, flag, MAX_POLLS)",
           CHAIN_BARRIER_TESTS),
    Mutant("triton_chain_cell_state_in_input_dtype", "zf_kernels/ops/recurrence/triton.py",
           "    state_dtype = torch.float32 if dtype in _HALF else dtype\n    gates_x, post_x, eps",
           "    state_dtype = dtype\n    gates_x, post_x, eps", CHAIN_HALF_TESTS),
    Mutant("triton_chain_carried_dc_in_input_dtype", "zf_kernels/ops/recurrence/triton.py",
           "dc = torch.zeros(B, H, dtype=state_dtype, device=dev)", "dc = torch.zeros(B, H, dtype=dtype, device=dev)",
           CHAIN_HALF_TESTS),
    Mutant("triton_chain_leaky_grad_one_at_zero", "zf_kernels/ops/_triton_common.py",
           "g = tl.where(x > 0, zero + 1.0, zero + slope)", "g = tl.where(x >= 0, zero + 1.0, zero + slope)",
           (CHAIN + "test_leaky_kink_at_zero_passes_the_slope",)),
    # the Triton LSTM (zf_kernels/ops/lstm/triton.py)
    Mutant("triton_lstm_bwd_persistent_reverse_reads_the_wrong_step", "zf_kernels/ops/lstm/triton.py",
           "        t_next = t\n    tl.store(dc_ptr + row, dc, mask=m2)",
           "        t_next = s\n    tl.store(dc_ptr + row, dc, mask=m2)",
           (LSTM + "test_lstm_matches_nn_lstm_and_naive",)),
    Mutant("triton_lstm_fwd_barrier_does_not_wait", "zf_kernels/ops/lstm/triton.py",
           "ok = grid_barrier(counter, (s + 1) * n_h, ok, flag, MAX_POLLS)",
           "ok = grid_barrier(counter, s * n_h, ok, flag, MAX_POLLS)", LSTM_BARRIER_TESTS),
    Mutant("triton_lstm_bwd_barrier_does_not_wait", "zf_kernels/ops/lstm/triton.py",
           "ok = grid_barrier(counter, (r + 1) * n_h, ok, flag, MAX_POLLS)",
           "ok = grid_barrier(counter, r * n_h, ok, flag, MAX_POLLS)", LSTM_BARRIER_TESTS),
    Mutant("triton_lstm_gate_k_mask_closed", "zf_kernels/ops/lstm/triton.py", "            mk = rk < H\n",
           "            mk = rk <= H\n", (LSTM + "test_lstm_matches_nn_lstm_and_naive",)),
    Mutant("triton_lstm_unit_mask_closed", "zf_kernels/ops/lstm/triton.py", "    return rb, rj, rb < B, rj < H",
           "    return rb, rj, rb < B, rj <= H", (LSTM + "test_lstm_matches_nn_lstm_and_naive",)),
    Mutant("triton_lstm_cell_bias_grad_of_row_0", "zf_kernels/ops/lstm/triton.py",
           "grad_b = dgates.sum(0) if need[4] else None", "grad_b = dgates[0] if need[4] else None",
           (LSTM + "test_lstm_cell_matches_nn_lstm_cell_and_naive",)),
    Mutant("triton_lstm_carried_dc_in_input_dtype", "zf_kernels/ops/lstm/triton.py",
           "dc = d_cT.to(c_all.dtype, copy=True).contiguous()", "dc = d_cT.to(x.dtype, copy=True).contiguous()",
           (LSTM + "test_lstm_bfloat16_carried_cell_gradient_in_float32", LSTM + "test_lstm_low_precision")),
    Mutant("triton_lstm_stepwise_dh_T_at_the_first_step", "zf_kernels/ops/lstm/triton.py",
           "HAS_DHX=last, HAS_NEXT=not last", "HAS_DHX=s == 0, HAS_NEXT=not last",
           (LSTM + "test_lstm_matches_nn_lstm_and_naive",)),
    # the distribution kernels (zf_kernels/ops/distributions/triton.py)
    Mutant("triton_logsumexp_without_the_max", "zf_kernels/ops/distributions/triton.py",
           "m_new = tl.maximum(m, tl.max(lg, axis=1))", "m_new = m", DISTRIBUTION_TESTS),
    Mutant("triton_bernoulli_softplus_overflows", "zf_kernels/ops/distributions/triton.py",
           "nll = (1.0 - x) * lg - tl.minimum(lg, 0.0) + _log1p(tl.exp(-tl.abs(lg)))",
           "nll = (1.0 - x) * lg + _log1p(tl.exp(-lg))", DISTRIBUTION_TESTS),
    Mutant("triton_mask_grad_from_masked_values", "zf_kernels/ops/distributions/triton.py",
           "    if STORE_RAW:\n        tl.store(raw_ptr + rows, val, mask=row_ok)\n    if HAS_MASK:\n"
           "        val = val * tl.load(mask_ptr + row_i * s_mask, mask=row_ok, other=0.0).to(ACC)\n",
           "    if HAS_MASK:\n        val = val * tl.load(mask_ptr + row_i * s_mask, mask=row_ok, other=0.0).to(ACC)\n"
           "    if STORE_RAW:\n        tl.store(raw_ptr + rows, val, mask=row_ok)\n", (DIST + "test_mask_gradient",)),
    Mutant("triton_gaussian_nll_sums_padding_columns", "zf_kernels/ops/distributions/triton.py",
           "acc += tl.where(ok, 0.5 * nll, 0.0)", "acc += 0.5 * nll", (DIST + "test_matches_reference",)),
    Mutant("triton_categorical_grad_adds_max_and_log_sum", "zf_kernels/ops/distributions/triton.py",
           "p = tl.exp((lg - m[:, None]) - log_s[:, None])", "p = tl.exp(lg - (m[:, None] + log_s[:, None]))",
           (DIST + "test_categorical_float32_logits_far_from_zero",
            DIST + "test_categorical_16bit_logits_far_from_zero", DIST + "test_extreme_values")),
    Mutant("triton_g_times_exp_zero_times_overflow", "zf_kernels/ops/distributions/triton.py",
           'tl.where((g == 0.0) & (a < float("inf")), 0.0, g * tl.exp(a))', "tl.where(g == 0.0, 0.0, g * tl.exp(a))",
           (DIST + "test_gaussian_kl_zero_gradient_times_infinite_ratio_is_nan_like_the_reference",
            DIST + "test_extreme_values")),
    Mutant("triton_scaled_square_grad_zero_times_overflow", "zf_kernels/ops/distributions/triton.py",
           "return gr, tl.where(gr == 0.0, gr, gr * (d * s))", "return gr, gr * (d * s)", DISTRIBUTION_TESTS),
    # the Triton leaky clamp (zf_kernels/ops/activations/triton.py)
    Mutant("triton_leaky_clamp_grad_one_at_zero", "zf_kernels/ops/activations/triton.py",
           "tl.where(x > 0, g, g * SLOPE)", "tl.where(x >= 0, g, g * SLOPE)", ("tests/test_triton_leaky_clamp.py",)),
    # csrc/chain_kernels.cu (CPU emulation)
    Mutant("cuda_chain_bwd_drops_carried_dc", "csrc/chain_kernels.cu", "A dc = x.grad_c + dcs[ce];",
           "A dc = x.grad_c;", EMU_CHAIN_TESTS),
    Mutant("cuda_chain_bwd_drops_the_w_hh_term", "csrc/chain_kernels.cu",
           "if (!last) dh += pre[b * U + u] + tile_sum(part, b, u, mqh, p);",
           "if (!last) dh += tile_sum(part, b, u, mqh, p);", EMU_CHAIN_TESTS),
    Mutant("cuda_chain_lv_clamp_open_high", "csrc/chain_kernels.cu", "ok[Z] = (pl >= A(-8) && pl <= A(8)) ? 1 : 0;",
           "ok[Z] = (pl >= A(-8) && pl < A(8)) ? 1 : 0;",
           ("tests/test_cuda_emulation_chain.py::test_cuda_emulated_chain_clamps_pass_the_gradient_at_their_ends",)),
    Mutant("cuda_leaky_clamp_grad_one_at_zero", "csrc/chain_kernels.cu", "return x > T(0) ? g : g * T(1.0 / 3.0);",
           "return x >= T(0) ? g : g * T(1.0 / 3.0);",
           ("tests/test_cuda_emulation_chain.py::test_cuda_emulated_chain_leaky_kink_at_zero_passes_the_slope",)),
    Mutant("cuda_chain_bwd_blocks_without_latents_skip_w_hh", "csrc/chain_kernels.cu",
           "if (nz > 0 || (nu > 0 && t > 0)) {", "if (nz > 0) {", EMU_CHAIN_TESTS),
    # csrc/lstm_kernels.cu (CPU emulation)
    Mutant("cuda_lstm_fwd_reverse_reads_the_wrong_h", "csrc/lstm_kernels.cu", "(P.reverse ? t + 1 : t - 1) * BH",
           "(t - 1) * BH", EMU_LSTM_TESTS),
    Mutant("cuda_lstm_bwd_drops_dh_T", "csrc/lstm_kernels.cu",
           "return last ? zf_widen(d_out) + zf_widen(d_hT) : zf_widen(d_out);", "return zf_widen(d_out);",
           EMU_LSTM_TESTS),
    Mutant("cuda_lstm_bwd_dc_not_written_back", "csrc/lstm_kernels.cu",
           "    if (j < H) P.dc[static_cast<size_t>(b) * H + j] = dcs[e];",
           "    if (j < 0) P.dc[static_cast<size_t>(b) * H + j] = dcs[e];",
           EMU_LSTM_TESTS),
    # csrc/zf_persistent.h: the tensor-core tiles (CPU emulation)
    Mutant("cuda_mma_drops_the_odd_k_step", "csrc/zf_persistent.h", "  if (s < ksteps) step(d[0], s);\n", "",
           ("tests/test_cuda_emulation_tf32.py", "tests/test_cuda_emulation_bf16.py")),
    Mutant("cuda_tf32_weight_k_mask_closed", "csrc/zf_persistent.h", "k + t + 4 < kw ? w[(k + 4) * wk] : 0.f",
           "k + t + 4 <= kw ? w[(k + 4) * wk] : 0.f", ("tests/test_cuda_emulation_tf32.py",)),
    Mutant("cuda_3xtf32_runs_one_pass", "csrc/zf_persistent.h", "*mma = es == 4 ? tf32 : es == 2 ? 1 : 0;",
           "*mma = es == 4 ? (tf32 ? 1 : 0) : es == 2 ? 1 : 0;", ("tests/test_cuda_emulation_tf32.py",)),
    # csrc/zf_device.h: the emulator's own rounding (what the emulation tests trust)
    Mutant("emulated_bf16_rounds_ties_up", "csrc/zf_device.h", "u += 0x7FFFu + ((u >> 16) & 1u);", "u += 0x8000u;",
           ("tests/test_cuda_emulation_bf16.py::test_bf16_chain_rounds_ties_to_even",)),
    Mutant("emulated_tf32_truncates", "csrc/zf_device.h", "u = (u + 0x1000u) & ~0x1FFFu;", "u = u & ~0x1FFFu;",
           ("tests/test_cuda_emulation_tf32.py",)),
    # round 8: bad input and dispatch: the ops' argument checks, "auto" and explain, the data
    # loaders' file checks, checkpoints and the commands' flags
    Mutant("check_tensor_any_ndim", "zf_kernels/ops/_checks.py", "    if ndim is not None and t.dim() != ndim:",
           "    if False:", OPS_ARG_TESTS),
    Mutant("check_tensor_min_ndim_off_by_one", "zf_kernels/ops/_checks.py", "t.dim() < min_ndim:",
           "t.dim() < min_ndim - 1:", OPS_ARG_TESTS),
    Mutant("check_tensor_accepts_integers", "zf_kernels/ops/_checks.py",
           "    if floating and t.dtype not in FLOAT_DTYPES:", "    if False:", OPS_ARG_TESTS),
    Mutant("bernoulli_nll_accepts_x_outside_the_unit_interval", "zf_kernels/ops/distributions/__init__.py",
           "        if not (0 <= lo and hi <= 1):", "        if not (0 <= lo):", OPS_ARG_TESTS),
    Mutant("model_accepts_bernoulli_data_outside_the_unit_interval", "zf_kernels/sequences.py",
           'elif output_type == "bernoulli" and y.numel() and ((y < 0) | (y > 1)).any():',
           'elif output_type == "bernoulli" and y.numel() and (y < 0).any():', ("tests/test_model.py::test_bad_input",)),
    Mutant("check_shape_compares_sizes_only", "zf_kernels/ops/_checks.py", "    if tuple(t.shape) != tuple(shape):",
           "    if t.numel() != torch.Size(shape).numel():", OPS_ARG_TESTS),
    Mutant("check_same_ignores_dtypes", "zf_kernels/ops/_checks.py", "        if dtype and t.dtype != t0.dtype:",
           "        if False:", OPS_ARG_TESTS),
    Mutant("check_shape_message_unnamed", "zf_kernels/ops/_checks.py",
           'raise ValueError(f"{name} must have shape {tuple(shape)}', 'raise ValueError(f"must have shape {tuple(shape)}',
           OPS_ARG_TESTS),
    Mutant("check_mask_on_another_device", "zf_kernels/ops/_checks.py", "    if mask.device != ref.device:",
           "    if False:", OPS_ARG_TESTS),
    Mutant("check_mask_not_a_tensor", "zf_kernels/ops/_checks.py",
           "    if not isinstance(mask, torch.Tensor):\n        raise TypeError(f\"{name} must be a torch.Tensor or None",
           "    if False:\n        raise TypeError(f\"{name} must be a torch.Tensor or None", OPS_ARG_TESTS),
    Mutant("auto_sends_cpu_tensors_to_triton", "zf_kernels/ops/_dispatch.py",
           "    if not _on_cuda(tensors):\n        return reference(", "    if False:\n        return reference(",
           OPS_ARG_TESTS),
    Mutant("triton_takes_cpu_tensors_outside_the_interpreter", "zf_kernels/ops/_dispatch.py",
           '        if devices != {"cuda"} and not _interpreting():', "        if False:", OPS_ARG_TESTS),
    Mutant("unsupported_hook_ignored", "zf_kernels/ops/_dispatch.py",
           "    return unsupported(*tensors) if unsupported is not None else None", "    return None", OPS_ARG_TESTS),
    Mutant("auto_ignores_the_unverified_gate", "zf_kernels/ops/_dispatch.py",
           "        if gate is not None and not _auto_takes_unverified():", "        if False:", OPS_ARG_TESTS),
    Mutant("auto_unverified_env_any_value", "zf_kernels/ops/_dispatch.py", '    if value not in ("0", "1", ""):',
           "    if False:", OPS_ARG_TESTS),
    Mutant("explain_requested_without_asking", "zf_kernels/ops/_dispatch.py",
           "    why = _why_not(op, backend, tensors)\n    if why is not None:\n        return backend, why\n",
           "", OPS_ARG_TESTS),
    Mutant("auto_fallback_drops_the_reasons", "zf_kernels/ops/_dispatch.py",
           '        reasons.append(f"{candidate}: {why}")', "        pass", OPS_ARG_TESTS),
    Mutant("explain_compiling_not_a_bool", "zf_kernels/ops/_dispatch.py",
           "    if compiling is not None and not isinstance(compiling, bool):", "    if False:",
           ("tests/test_compile.py::test_auto_under_compile_traces_the_small_ops_and_keeps_the_recurrences_fused",)),
    Mutant("explain_unknown_op", "zf_kernels/ops/_dispatch.py",
           '    if op not in _REGISTRY:\n        raise ValueError(f"unknown op {op!r}; known ops: {sorted(_REGISTRY)}")\n'
           "    if backend not in BACKENDS:", "    if backend not in BACKENDS:", OPS_ARG_TESTS),
    Mutant("lstm_weight_hh_rows_any_multiple", "zf_kernels/ops/lstm/__init__.py", "    if four_h != 4 * H:",
           "    if four_h % H:", OPS_ARG_TESTS),
    Mutant("lstm_bias_shape_unchecked", "zf_kernels/ops/lstm/__init__.py",
           "            check_shape(name, b, (4 * H,))\n    for name, s", "            pass\n    for name, s",
           OPS_ARG_TESTS),
    Mutant("lstm_weight_ih_input_size_unchecked", "zf_kernels/ops/lstm/__init__.py",
           'check_shape("weight_ih", weight_ih, (4 * H, I))', 'check_shape("weight_ih", weight_ih, (4 * H, weight_ih.shape[1]))',
           OPS_ARG_TESTS),
    Mutant("lstm_cell_gates_x_width_unchecked", "zf_kernels/ops/lstm/__init__.py",
           'check_shape("gates_x", gates_x, (B, 4 * H))', 'check_shape("gates_x", gates_x, (B, gates_x.shape[1]))',
           OPS_ARG_TESTS),
    Mutant("lstm_cell_h_batch_broadcasts", "zf_kernels/ops/lstm/__init__.py", '    check_shape("h", h, (B, H))',
           '    check_shape("h", h, (h.shape[0], H))', OPS_ARG_TESTS),
    Mutant("chain_gates_x_width_unchecked", "zf_kernels/ops/recurrence/__init__.py",
           "    if four_h != 4 * H:\n        raise ValueError(f\"gates_x", "    if False:\n        raise ValueError(f\"gates_x",
           OPS_ARG_TESTS),
    Mutant("chain_eps_steps_unchecked", "zf_kernels/ops/recurrence/__init__.py",
           'check_shape("eps", eps, (T, B, Z))', 'check_shape("eps", eps, (eps.shape[0], B, Z))', OPS_ARG_TESTS),
    Mutant("chain_weight_iz_rows_unchecked", "zf_kernels/ops/recurrence/__init__.py",
           'check_shape("weight_iz", weight_iz, (4 * H, G))', 'check_shape("weight_iz", weight_iz, (weight_iz.shape[0], G))',
           OPS_ARG_TESTS),
    Mutant("chain_ln_weight_g2_rows_unchecked", "zf_kernels/ops/recurrence/__init__.py",
           'check_shape("weight_g2", weight_g2, (8 * H, G))', 'check_shape("weight_g2", weight_g2, (weight_g2.shape[0], G))',
           OPS_ARG_TESTS),
    Mutant("chain_states_batch_broadcasts", "zf_kernels/ops/recurrence/__init__.py",
           "        check_shape(name, s, (B, H))", "        check_shape(name, s, (s.shape[0], H))", OPS_ARG_TESTS),
    Mutant("chain_mixed_dtypes_accepted", "zf_kernels/ops/recurrence/__init__.py",
           '    check_same(list(zip(names, args)))\n    return _dispatch.resolve("zforcing_chain", backend',
           '    return _dispatch.resolve("zforcing_chain", backend', OPS_ARG_TESTS),
    Mutant("distribution_shapes_broadcast", "zf_kernels/ops/distributions/__init__.py",
           "        check_shape(name, t, tensors[0].shape)", "        torch.broadcast_shapes(t.shape, tensors[0].shape)",
           OPS_ARG_TESTS),
    Mutant("categorical_bool_targets_accepted", "zf_kernels/ops/distributions/__init__.py",
           "if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():",
           "if targets.dtype.is_floating_point or targets.is_complex():", OPS_ARG_TESTS),
    Mutant("categorical_negative_targets_accepted", "zf_kernels/ops/distributions/__init__.py",
           "(int(targets.min()) < 0 or", "(int(targets.min()) < -1 or", OPS_ARG_TESTS),
    Mutant("categorical_targets_shape_unchecked", "zf_kernels/ops/distributions/__init__.py",
           '    check_shape("targets", targets, logits.shape[:-1])', "    pass", OPS_ARG_TESTS),
    Mutant("bernoulli_mask_unchecked", "zf_kernels/ops/distributions/__init__.py",
           '    mask = check_mask(mask, x.shape[:-1], x)\n    return _dispatch.resolve("bernoulli_nll"',
           '    return _dispatch.resolve("bernoulli_nll"', OPS_ARG_TESTS),
    Mutant("npz_nan_reported_as_float32_overflow", "zf_kernels/data/npz.py",
           "    _check_finite(arr, key, path)\n    with np.errstate", "    with np.errstate", DATA_TESTS),
    Mutant("npz_float32_overflow_unchecked", "zf_kernels/data/npz.py",
           "    if out.size and not np.isfinite(out).all():", "    if False:", DATA_TESTS),
    Mutant("npz_mask_fractions_accepted", "zf_kernels/data/npz.py", "    not_binary = ~((m == 0) | (m == 1))",
           "    not_binary = m < 0", DATA_TESTS),
    Mutant("npz_mask_rows_only_compared", "zf_kernels/data/npz.py", "    if mask.shape != tuple(shape):",
           "    if mask.shape[0] != shape[0]:", DATA_TESTS),
    Mutant("npz_token_equal_to_vocab_size", "zf_kernels/data/npz.py", "    if largest >= input_dim:",
           "    if largest > input_dim:", DATA_TESTS),
    Mutant("npz_negative_token_accepted", "zf_kernels/data/npz.py", "            if v.min() < 0:",
           "            if v.min() < -1:", DATA_TESTS),
    Mutant("npz_speech_frame_sizes_unchecked", "zf_kernels/data/npz.py",
           "        if dim is not None and x.shape[2] != dim:", "        if False:", DATA_TESTS),
    Mutant("npz_bernoulli_negative_values", "zf_kernels/data/npz.py", "(v.min() < 0 or v.max() > 1)",
           "(v.min() < -1 or v.max() > 1)", DATA_TESTS),
    Mutant("mnist_magic_unchecked", "zf_kernels/data/mnist.py", "    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):",
           "    if False:", DATA_TESTS),
    Mutant("mnist_one_byte_short_accepted", "zf_kernels/data/mnist.py", "    if len(data) < size:",
           "    if len(data) < size - 1:", DATA_TESTS),
    Mutant("mnist_image_columns_unchecked", "zf_kernels/data/mnist.py", "        if (rows, cols) != (ROWS, COLS):",
           "        if rows != ROWS:", DATA_TESTS),
    Mutant("mnist_images_without_their_labels", "zf_kernels/data/mnist.py", "        if len(images) != len(labels):",
           "        if False:", DATA_TESTS),
    Mutant("mnist_limit_zero_accepted", "zf_kernels/data/mnist.py", "not isinstance(limit, int) or limit < 1:",
           "not isinstance(limit, int) or limit < 0:", DATA_TESTS),
    Mutant("checkpoint_format_version_ignored", "zf_kernels/training/checkpoint.py",
           'state.get("format_version") != FORMAT_VERSION', '"format_version" not in state',
           ("tests/test_faults.py::test_a_checkpoint_of_another_format_version_is_refused",)),
    Mutant("checkpoint_crc_unchecked", "zf_kernels/training/checkpoint.py", "    if bad is not None:", "    if False:",
           ("tests/test_faults.py::test_corruption_or_truncation_is_a_checkpoint_error_never_a_silent_change",)),
    Mutant("trained_ignores_the_data_description", "zf_kernels/trained.py",
           '    differ = meta_differences(bundle.meta, state["data_meta"])', "    differ = []", CLI_CHECK_TESTS),
    Mutant("trained_ignores_the_model_config", "zf_kernels/trained.py",
           '    if state["model_config"] != model.config:', "    if False:", CLI_CHECK_TESTS),
    Mutant("evaluate_limit_zero_accepted", "zf_kernels/evaluate.py", "(value == 0 and not zero_ok)",
           "(value == 0 and False)", CLI_CHECK_TESTS),
    Mutant("check_window_takes_a_bool", "zf_kernels/evaluate.py",
           "    if isinstance(window, bool) or not isinstance(window, int) or window < 1:",
           "    if not isinstance(window, int) or window < 1:", ("tests/test_evaluate.py::test_bad_window_is_refused_by_name",)),
    Mutant("sample_temperature_zero_accepted", "zf_kernels/sample.py", "    if not temperature > 0:",
           "    if temperature < 0:", CLI_CHECK_TESTS),
    Mutant("sample_prompt_fills_all_steps", "zf_kernels/sample.py", "    if len(ids) >= steps:",
           "    if len(ids) > steps:", CLI_CHECK_TESTS),
    Mutant("vae_dims_take_a_bool", "python/common.py",
           "            if isinstance(v, bool) or not isinstance(v, int) or v < 1:",
           "            if not isinstance(v, int) or v < 1:", ("tests/test_python_vaes.py::test_bad_arguments_get_clear_errors",)),
    # session 23: double backward through a fused backward
    Mutant("fused_backward_ignores_saved_inputs", "zf_kernels/ops/_autograd.py",
           "            if not torch.is_grad_enabled():",
           "            if not torch.is_grad_enabled() or not any(isinstance(g, torch.Tensor) and g.requires_grad "
           "for g in grads):",
           ("tests/test_double_backward.py",)),
    # session 23's review fixes
    Mutant("lstm_cell_fake_keeps_input_strides", "zf_kernels/ops/lstm/triton_op.py",
           "    return _contiguous_empty(h), _contiguous_empty(c), _contiguous_empty(gates_x)\n",
           "    return torch.empty_like(h), torch.empty_like(c), torch.empty_like(gates_x)\n",
           ("tests/test_compile.py::test_triton_step_custom_ops_pass_opcheck_on_transposed_inputs",)),
    Mutant("mlp_gradient_zero_nan_at_inf", "zf_kernels/ops/_triton_common.py",
           "    zero = tl.zeros_like(x)\n", "    zero = x * 0.0\n",
           ("tests/test_triton_chain.py::test_infinite_mlp_preactivation_has_zero_gradient",)),
    Mutant("leaky_clamp_bound_not_in_x_dtype", "zf_kernels/ops/activations/triton.py",
           "        bound = torch.tensor(bound, dtype=dtype).item()\n", "        bound = float(bound)\n",
           ("tests/test_triton_leaky_clamp.py",)),
    Mutant("resume_noise_state_left_on_the_load_device", "zf_kernels/train.py",
           '        saved_noise = state["eps_generator"].cpu()', '        saved_noise = state["eps_generator"]',
           ("tests/test_train.py::test_resume_reads_the_noise_generator_whatever_the_checkpoint_was_loaded_onto",)),
    Mutant("data_fingerprint_never_compared", "zf_kernels/data/batching.py",
           '    if "fingerprint" not in saved:\n', "    if True:\n",
           ("tests/test_train.py::test_resume_and_evaluate_refuse_other_data_with_the_same_description",)),
    Mutant("iwae_log_densities_in_16_bit", "zf_kernels/bounds.py",
           '        wide = torch.promote_types(lat["z"].dtype, torch.float32)\n', '        wide = lat["z"].dtype\n',
           ("tests/test_model.py::test_bfloat16_log_weights_keep_the_nats_the_samples_differ_by",)),
    Mutant("eval_steps_summed_in_the_model_dtype", "zf_kernels/evaluate.py",
           "            n_steps += int((mask != 0).sum()) if mask is not None",
           "            n_steps += int(mask.sum()) if mask is not None",
           ("tests/test_evaluate.py::test_a_bfloat16_model_counts_every_step",)),
    Mutant("case_rel_err_drops_a_nan", "benchmarks/common.py",
           "    return math.nan if any(math.isnan(e) for e in errors) else max(errors)\n", "    return max(errors)\n",
           ("tests/test_benchmarks_smoke.py::test_rows_with_a_wrong_result_are_marked_mismatch",)),
    Mutant("train_rows_without_accuracy_status", "benchmarks/bench_train_step.py",
           '        status, why = common.accuracy_status(base["dtype"], err)\n', '        status, why = "ok", ""\n',
           ("tests/test_benchmarks_smoke.py::test_training_step_rows_with_a_wrong_loss_are_marked_mismatch",)),
    Mutant("rest_skips_stages_never_reached", "benchmarks/device_check.sh",
           "if (!(s[i] in st) || st[s[i]]", "if (st[s[i]]",
           ("tests/test_benchmarks_smoke.py::test_device_check_stage_selection_and_budgets",)),
    Mutant("empty_chain_weights_without_gradient", "zf_kernels/ops/recurrence/triton.py",
           "    return tuple(torch.zeros_like(saved[i]) if i < len(saved) and need else None\n",
           "    return tuple(torch.zeros_like(saved[i]) if i < 5 and need else None\n",
           ("tests/test_triton_chain.py::test_zero_steps_or_sequences",)),
    Mutant("triton_launch_on_the_current_device", "zf_kernels/ops/_dispatch.py",
           '    if backend != "triton" or torch.compiler.is_compiling():\n        return fn\n',
           '    if True:\n        return fn\n',
           ("tests/test_cuda_dispatch.py::test_triton_calls_run_with_the_tensors_device_current",)),
)


def _moved(root: Path = ROOT) -> dict:
    """{mutant: how often its snippet occurs} for those whose snippet is not there exactly once."""
    counts = {m: (root / m.path).read_text().count(m.old) for m in MUTANTS}
    return {m: n for m, n in counts.items() if n != 1}


def _problem(m: Mutant, n: int) -> str:
    return f"{m.name}: its snippet occurs {n} times in {m.path}"


def snippet_problems(root: Path = ROOT) -> list[str]:
    """Mutants whose snippet does not occur exactly once (the code moved: update the mutant)."""
    return [_problem(m, n) for m, n in _moved(root).items()]


def _scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _pytest(work: Path, tests, timeout: float | None = None) -> subprocess.CompletedProcess:
    """The tests in ``work``; a run past ``timeout`` seconds comes back with returncode None."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return subprocess.CompletedProcess(cmd, None, out, "")


def run(mutants, baseline: bool = True, log=print, timeout: float = 600.0) -> list[str] | None:
    """Each mutant in a scratch copy; returns the names of those that survived, or None when
    ``baseline`` (the mutants' tests on the unchanged copy) fails: a kill would mean nothing.
    A mutant whose tests run past ``timeout`` seconds survives: a hang is not a failing test
    (a barrier one arrival short kept the interpreter's threads polling for half an hour)."""
    survivors = []
    with tempfile.TemporaryDirectory(prefix="zf_mutants_") as tmp:
        work = Path(tmp)
        _scratch_copy(work)
        if baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            proc = _pytest(work, tests)
            log(f"baseline: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]}")
            if proc.returncode != 0:
                return None
        for m in mutants:
            path = work / m.path
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            t0 = time.time()
            try:
                proc = _pytest(work, m.tests, timeout)
            finally:
                path.write_text(original)
            failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            if proc.returncode == 1 and failed:
                log(f"killed    {m.name:40} {time.time() - t0:5.0f} s  {failed[0][:110]}")
            else:
                survivors.append(m.name)
                why = "timed out" if proc.returncode is None else f"pytest exit {proc.returncode}"
                log(f"SURVIVED  {m.name:40} {time.time() - t0:5.0f} s  ({why})")
    return survivors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the mutants' names and exit")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds a mutant's tests may run; past that it survives (default 600)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the first run of the mutants' tests on the unchanged code (it must pass)")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(f"{m.name:40} {m.path}" for m in MUTANTS))
        return 0
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        ap.error(f"unknown mutants: {', '.join(sorted(unknown))} (see --list)")
    moved = _moved()
    for m, n in moved.items():
        print(_problem(m, n))
    chosen = [m for m in MUTANTS if (not args.names or m.name in args.names) and m not in moved]
    survivors = run(chosen, baseline=not args.no_baseline, timeout=args.timeout,
                    log=lambda line: print(line, flush=True))
    if survivors is None:
        print("the tests fail on the unchanged code: fix that first")
        return 1
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants killed"
          + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors or moved else 0


if __name__ == "__main__":
    sys.exit(main())
