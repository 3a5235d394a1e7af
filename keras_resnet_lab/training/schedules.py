"""One learning-rate schedule for a whole run: a shape (constant, step, cosine, one-cycle)
applied within each phase, by optimizer step, so resuming restores its position exactly
(it is a function of `optimizer.iterations`, which the checkpoint holds).
"""

import math

import keras
from keras import ops

ONECYCLE_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4  # torch.optim.lr_scheduler.OneCycleLR


@keras.saving.register_keras_serializable(package="keras_resnet_lab")
class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at a global step, for phases given as (first_step, num_steps, peak_lr).

    Shapes inside a phase: "constant"; "step" (times `gamma` every `step_size` steps);
    "cosine" (linear warm-up over `warmup_steps`, then cosine to 0); "onecycle" (PyTorch's
    OneCycleLR: rise from peak/25 over 30% of the phase, cosine down to peak/25e4).
    """

    def __init__(self, phases, shape="constant", warmup_steps=0, step_size=1, gamma=0.1):
        self.phases = [tuple(p) for p in phases]
        self.shape = shape
        self.warmup_steps = warmup_steps
        self.step_size = step_size
        self.gamma = gamma

    def _phase_lr(self, t, steps, peak):
        """Learning rate at step `t` (float tensor) of a phase of `steps` steps."""
        if self.shape == "step":
            return peak * ops.power(self.gamma, ops.floor(t / self.step_size))
        if self.shape == "cosine":
            warm = float(self.warmup_steps)
            decay = ops.maximum(float(steps) - warm, 1.0)
            progress = ops.clip((t - warm) / decay, 0.0, 1.0)
            cosine = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
            return cosine if not warm else ops.where(t < warm, peak * (t + 1.0) / warm, cosine)
        if self.shape == "onecycle":
            up = max(ONECYCLE_START * steps, 1.0)
            start, end = peak / ONECYCLE_DIV, peak / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
            rise = ops.clip(t / up, 0.0, 1.0)
            fall = ops.clip((t - up) / max(steps - up, 1.0), 0.0, 1.0)
            rising = start + (peak - start) * 0.5 * (1 - ops.cos(math.pi * rise))
            falling = end + (peak - end) * 0.5 * (1 + ops.cos(math.pi * fall))
            return ops.where(t < up, rising, falling)
        return peak + 0.0 * t

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = self._phase_lr(step - self.phases[0][0], self.phases[0][1], self.phases[0][2])
        for first, steps, peak in self.phases[1:]:
            lr = ops.where(step >= first, self._phase_lr(step - first, steps, peak), lr)
        return lr

    def get_config(self):
        return {
            "phases": [list(p) for p in self.phases], "shape": self.shape,
            "warmup_steps": self.warmup_steps, "step_size": self.step_size, "gamma": self.gamma,
        }


def build_schedule(config, spans, steps_per_epoch):
    """The schedule for `config`'s phases; `steps_per_epoch` maps a batch size to steps."""
    phases, first = [], 0
    for start, end, lr, batch in spans:
        steps = (end - start) * steps_per_epoch(batch)
        phases.append((first, steps, lr))
        first += steps
    shape = "constant" if config.schedule == "plateau" else config.schedule
    per_epoch = steps_per_epoch(spans[0][3])
    return PhasedSchedule(
        phases, shape, warmup_steps=int(config.warmup_epochs * per_epoch),
        step_size=max(config.step_epochs * per_epoch, 1), gamma=config.step_gamma,
    )
