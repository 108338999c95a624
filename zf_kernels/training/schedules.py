"""Loss-weight schedules (KL annealing, auxiliary weight) and the plateau learning-rate rule."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LossWeights:
    """Weights used by the current step; ``advance()`` moves them to the next step's."""
    kl: float
    aux: float
    kl_step: float
    aux_step: float
    aux_end: float
    previous: tuple | None = None   # (kl, aux) of the last step taken; None before the first

    def last_used(self) -> tuple:
        """``(kl, aux)`` the last step used (what a metrics line reports), or the first step's
        weights before any step."""
        return tuple(self.previous) if self.previous is not None else (self.kl, self.aux)

    @classmethod
    def from_config(cls, cfg):
        return cls(kl=min(cfg.kl_start, 1.0), aux=cfg.aux_start, kl_step=cfg.kl_step,
                   aux_step=cfg.aux_step, aux_end=cfg.aux_end)

    def advance(self):
        # KL weight rises linearly to 1; the aux weight moves linearly towards aux_end
        self.previous = (self.kl, self.aux)
        self.kl = min(self.kl + self.kl_step, 1.0)
        if self.aux <= self.aux_end:
            self.aux = min(self.aux + self.aux_step, self.aux_end)
        else:
            self.aux = max(self.aux - self.aux_step, self.aux_end)

    def state_dict(self):
        return asdict(self)


@dataclass
class PlateauHalving:
    """Multiply the learning rate by ``decay`` after ``patience`` validations without a new
    best (never below ``lr_min``). Unlike the authors' code, the best loss persists across
    epochs, so the rule actually fires."""
    decay: float
    lr_min: float
    patience: int
    best: float = float("inf")
    bad: int = 0

    def update(self, valid_loss: float, optimizer) -> tuple[bool, bool]:
        """Record a validation loss; returns ``(is_new_best, lr_was_decayed)``."""
        if valid_loss < self.best:
            self.best, self.bad = valid_loss, 0
            return True, False
        self.bad += 1
        if self.bad < self.patience:
            return False, False
        self.bad = 0
        decayed = False
        for group in optimizer.param_groups:
            new = max(group["lr"] * self.decay, min(self.lr_min, group["lr"]))   # never up
            decayed |= new < group["lr"]
            group["lr"] = new
        return False, decayed

    def state_dict(self):
        return asdict(self)
