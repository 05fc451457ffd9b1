"""The training loop: divergence guard, checkpoints and resumption, EMA, learning-rate decay, the two steppers,
mixed precision and gradient accumulation."""

import pytest
import torch
from torch import nn

from sde_control.ema import EMA
from sde_control.training import TrainConfig, Trainer, TrainingDivergedError, config_from


def quadratic_problem():
    """Minimise |w - 3|^2 for a 4-vector w: a loss whose optimum is known."""
    module = nn.Linear(1, 4, bias=False)

    def loss_fn(iteration):
        return (module.weight - 3.0).square().sum(), {}

    return module, loss_fn


def config(iterations, **options):
    return TrainConfig(iterations=iterations, progress=False, **options)


def test_loss_decreases_and_lr_decays_stepwise():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, ema_decay=None)
    history = trainer.fit(loss_fn, config(100, lr=0.3, lr_final=0.02, lr_every=10))
    assert history[-1]["loss"] < 1e-2 * history[0]["loss"]
    assert history[0]["lr"] == pytest.approx(0.3)
    assert history[-1]["lr"] == pytest.approx(0.3 * 0.02 ** (90 / 100))  # last step of the 10th block
    assert len({record["lr"] for record in history}) == 10


def test_non_finite_loss_stops_training_before_the_update(tmp_path):
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    path = tmp_path / "ckpt.pt"

    def poisoned(iteration):
        loss, metrics = loss_fn(iteration)
        return (loss * float("nan") if iteration == 7 else loss), metrics

    with pytest.raises(TrainingDivergedError, match="iteration 7.*last checkpoint holds iteration 5"):
        trainer.fit(poisoned, config(20, lr=0.1, checkpoint_every=5),
                    checkpoint=lambda: torch.save(trainer.state_dict(), path))
    assert torch.isfinite(module.weight).all()
    assert trainer.iteration == 7
    assert torch.load(path, weights_only=True)["iteration"] == 5


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    reference = Trainer(module)
    reference.fit(loss_fn, config(12, lr=0.05, lr_every=3))

    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    path = tmp_path / "ckpt.pt"

    def interrupted(iteration):
        if iteration == 8:
            raise KeyboardInterrupt
        return loss_fn(iteration)

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(interrupted, config(12, lr=0.05, lr_every=3, checkpoint_every=4),
                    checkpoint=lambda: torch.save(trainer.state_dict(), path))

    module2 = nn.Linear(1, 4, bias=False)
    resumed = Trainer(module2)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.iteration == 8
    resumed.fit(lambda i: ((module2.weight - 3.0).square().sum(), {}), config(12, lr=0.05, lr_every=3), resume=True)
    assert resumed.iteration == 12 and len(resumed.history) == 12
    torch.testing.assert_close(module2.weight, reference.module.weight)
    torch.testing.assert_close(resumed.averaged.weight, reference.averaged.weight)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in reference.history]


def test_a_resumed_finished_run_can_be_extended():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    trainer.fit(loss_fn, config(5))
    with pytest.warns(UserWarning, match="nothing to train"):
        trainer.fit(loss_fn, config(5), resume=True)
    assert trainer.iteration == 5
    trainer.fit(loss_fn, config(8), resume=True)
    assert trainer.iteration == 8 and [r["iteration"] for r in trainer.history] == list(range(1, 9))


def test_ema_starts_at_the_weights_and_follows_them():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, ema_decay=0.99)
    trainer.fit(loss_fn, config(1, lr=0.3))
    torch.testing.assert_close(trainer.averaged.weight, module.weight)  # first update copies
    trainer.fit(loss_fn, config(200, lr=0.3))
    # The weights converge to 3; the warm-up decay lets the average forget the start quickly.
    assert (module.weight - 3).abs().max() < 0.05
    assert (trainer.averaged.weight - 3).abs().max() < 0.2
    assert not torch.equal(trainer.averaged.weight, module.weight)


def test_ema_rule_is_the_warm_up_average():
    """After n updates toward constant weights c from a, the average is c - (c - a) prod_k delta_k."""
    source = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        source.weight.fill_(1.0)
    ema = EMA(source, decay=0.9)
    with torch.no_grad():
        source.weight.fill_(2.0)
    ema.update(source)  # copies: 2
    with torch.no_grad():
        source.weight.fill_(5.0)
    factor = 1.0
    for n in range(1, 30):
        ema.update(source)
        factor *= min(0.9, (1 + n) / (10 + n))
    torch.testing.assert_close(ema.module.weight, torch.full((3, 1), 5.0 - 3.0 * factor))
    assert not ema.module.weight.requires_grad


def test_bad_options():
    with pytest.raises(ValueError, match="positive int"):
        TrainConfig(iterations=0)
    with pytest.raises(TypeError, match="unknown training option.*iterationz"):
        config_from(TrainConfig, {"iterationz": 3})


def test_deferred_steps_match_eager_steps_on_cpu():
    """The GPU path's bookkeeping (deferred loss checks, host-counted EMA) run eagerly on a CPU
    gives the weights, averages and learning rates of the ordinary loop."""
    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    eager = Trainer(module, ema_decay=0.9)
    eager.fit(loss_fn, config(20, lr=0.05, lr_every=3))

    torch.manual_seed(0)
    module2 = nn.Linear(1, 4, bias=False)
    deferred = Trainer(module2, ema_decay=0.9)
    with pytest.warns(UserWarning, match="without a CUDA device"):
        history = deferred.fit(lambda i: ((module2.weight - 3.0).square().sum(), {}),
                               config(20, lr=0.05, lr_every=3, cuda_graph=True, sync_every=7), graph_key=lambda i: 0)
    assert [r["iteration"] for r in history] == list(range(1, 21))
    torch.testing.assert_close(module2.weight, module.weight)
    torch.testing.assert_close(deferred.averaged.weight, eager.averaged.weight)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in history]), torch.tensor([r["loss"] for r in eager.history]))


def test_deferred_steps_restore_the_last_checked_state_on_divergence():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)

    def poisoned(iteration):
        loss, metrics = loss_fn(iteration)
        return (loss * float("nan") if iteration >= 12 else loss), metrics

    with pytest.warns(UserWarning, match="without a CUDA device"), \
            pytest.raises(TrainingDivergedError, match="iteration 12: the loss is nan.*those of iteration 10"):
        trainer.fit(poisoned, config(30, lr=0.1, cuda_graph=True, sync_every=5), graph_key=lambda i: 0)
    assert trainer.iteration == 10 and torch.isfinite(module.weight).all()
    assert torch.isfinite(trainer.averaged.weight).all()


def linear_regression(batch, seed=0):
    """A least-squares problem whose batches come from one generator: the micro-batches of two half batches are the
    rows of one full batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64, generator=g)
    module = nn.Linear(3, 1)
    position = [0]

    def loss_fn(iteration):
        rows = slice(position[0], position[0] + batch)
        position[0] = (position[0] + batch) % 64
        return (module(x[rows]).squeeze(-1) - y[rows]).square().mean(), {}

    return module, loss_fn


def test_gradient_accumulation_equals_the_full_batch():
    torch.manual_seed(0)
    full, full_loss = linear_regression(16)
    torch.manual_seed(0)
    accumulated, micro_loss = linear_regression(8)
    Trainer(full, ema_decay=None).fit(full_loss, config(6, lr=0.05))
    trainer = Trainer(accumulated, ema_decay=None)
    history = trainer.fit(micro_loss, config(6, lr=0.05, accumulation=2))
    for p, q in zip(full.parameters(), accumulated.parameters()):
        torch.testing.assert_close(p, q)
    assert len(history) == 6


def test_bfloat16_autocast_trains_and_keeps_float32_weights():
    torch.manual_seed(0)
    module, loss_fn = linear_regression(16)
    history = Trainer(module).fit(loss_fn, config(40, lr=0.05, precision="bfloat16"))
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in module.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(module).fit(loss_fn, config(1, precision="float8"))


def test_warm_up_ramps_the_learning_rate_linearly_then_the_decay_applies():
    module, loss_fn = quadratic_problem()
    history = Trainer(module).fit(loss_fn, config(20, lr=0.1, lr_final=0.5, lr_every=10, warmup=4))
    rates = [r["lr"] for r in history]
    assert rates[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])  # lr (i + 1) / 4, then lr
    assert rates[-1] == pytest.approx(0.1 * 0.5 ** (10 / 20))  # the decay's second block, warm-up long over


def poisoned_at(loss_fn, bad):
    def poisoned(iteration):
        loss, metrics = loss_fn(iteration)
        return (loss * float("inf") if iteration in bad else loss), metrics

    return poisoned


def test_non_finite_steps_within_the_patience_are_skipped_without_an_update():
    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    clean = Trainer(module, ema_decay=0.9)
    clean.fit(loss_fn, config(10, lr=0.05))

    torch.manual_seed(0)
    module2, loss_fn2 = quadratic_problem()
    trainer = Trainer(module2, ema_decay=0.9)
    history = trainer.fit(poisoned_at(loss_fn2, {3, 4, 7}), config(13, lr=0.05, nonfinite_patience=2))
    assert [r["iteration"] for r in history if "skipped" in r] == [4, 5, 8]
    assert trainer.iteration == 13
    # A skipped step changes nothing (weights, Adam's moments, the EMA), so 13 steps with 3 skipped land where 10
    # clean steps do (the learning rate is constant here).
    torch.testing.assert_close(module2.weight, module.weight)
    torch.testing.assert_close(trainer.averaged.weight, clean.averaged.weight)


def test_more_non_finite_steps_in_a_row_than_the_patience_stop_training(tmp_path):
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingDivergedError, match=r"iteration 8: the loss is inf \(3 non-finite steps in a row\).*"
                                                    r"last checkpoint holds iteration 5"):
        trainer.fit(poisoned_at(loss_fn, {6, 7, 8, 9}), config(20, lr=0.1, checkpoint_every=5, nonfinite_patience=2),
                    checkpoint=lambda: torch.save(trainer.state_dict(), path))
    assert torch.load(path, weights_only=True)["iteration"] == 5  # the last good checkpoint is kept
    assert torch.isfinite(module.weight).all()


def test_float16_overflow_lowers_the_scale_and_a_non_finite_loss_is_skipped():
    """The scaler's overflow skips (a finite loss with an infinite scaled gradient) are calibration, not failures:
    with patience 0 training goes on, the scale halves each time; a non-finite loss counts."""
    module = nn.Linear(1, 4, bias=False)
    big = {0, 1, 2}

    def loss_fn(iteration):
        factor = 1e35 if iteration in big else 1.0  # finite loss, but x 65536 overflows float32 in the backward pass
        return factor * (module.weight - 3.0).square().sum(), {}

    trainer = Trainer(module)
    history = trainer.fit(loss_fn, config(6, lr=0.1, precision="float16"))
    assert [r["iteration"] for r in history if "skipped" in r] == [1, 2, 3]
    assert trainer.scaler.get_scale() == 65536.0 / 8
    with pytest.raises(TrainingDivergedError, match="the loss is inf"):
        trainer.fit(poisoned_at(loss_fn, {7}), config(10, lr=0.1, precision="float16"), resume=True)


def test_an_interrupted_run_writes_a_checkpoint_before_it_stops(tmp_path):
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    written = []

    def interrupted(iteration):
        if iteration == 6:
            raise KeyboardInterrupt
        return loss_fn(iteration)

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(interrupted, config(20, checkpoint_every=4), checkpoint=lambda: written.append(trainer.iteration))
    assert written == [4, 6]
def test_a_time_limit_stops_the_run_with_a_last_evaluation_and_checkpoint(monkeypatch):
    """Each step takes 'one second' on a fake clock: a 3.5 s limit stops after the fourth, which is evaluated and
    checkpointed as a run's end is; a resumed run that is out of time trains nothing more."""
    import sde_control.training as training

    clock = iter(range(10_000))
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(clock)) / 2)  # two reads per step
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module)
    evaluated, saved = [], []
    history = trainer.fit(loss_fn, config(20, time_limit=3.5, checkpoint_every=100), evaluate_every=100,
                          evaluate=lambda: evaluated.append(trainer.iteration) or {},
                          checkpoint=lambda: saved.append(trainer.iteration))
    assert trainer.iteration == 4 and len(history) == 4 and evaluated == [4] and saved == [4]
    trainer.fit(loss_fn, config(20, time_limit=3.5), resume=True)
    assert trainer.iteration == 4
