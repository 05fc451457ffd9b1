"""The training loop: divergence guard, checkpoints and resumption, EMA, learning-rate decay."""

import pytest
import torch
from torch import nn

from sde_control.training import Trainer, TrainingDivergedError


def quadratic_problem():
    """Minimise |w - 3|^2 for a 4-vector w: a loss whose optimum is known."""
    module = nn.Linear(1, 4, bias=False)

    def loss_fn(iteration):
        return (module.weight - 3.0).square().sum(), {}

    return module, loss_fn


def test_loss_decreases_and_lr_decays_stepwise():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, lr=0.3, lr_final=0.02, lr_every=10, ema_decay=None)
    history = trainer.fit(loss_fn, 100, progress=False)
    assert history[-1]["loss"] < 1e-2 * history[0]["loss"]
    assert history[0]["lr"] == pytest.approx(0.3)
    assert history[-1]["lr"] == pytest.approx(0.3 * 0.02 ** (90 / 100))  # last step of the 10th block
    assert len({record["lr"] for record in history}) == 10


def test_non_finite_loss_stops_training_before_the_update(tmp_path):
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, lr=0.1)
    path = tmp_path / "ckpt.pt"

    def poisoned(iteration):
        loss, metrics = loss_fn(iteration)
        return (loss * float("nan") if iteration == 7 else loss), metrics

    with pytest.raises(TrainingDivergedError, match="iteration 7.*last checkpoint holds iteration 5"):
        trainer.fit(poisoned, 20, progress=False, checkpoint=lambda: torch.save(trainer.state_dict(), path),
                    checkpoint_every=5)
    assert torch.isfinite(module.weight).all()
    assert trainer.iteration == 7
    assert torch.load(path, weights_only=False)["iteration"] == 5


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    reference = Trainer(module, lr=0.05, lr_every=3)
    reference.fit(loss_fn, 12, progress=False)

    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, lr=0.05, lr_every=3)
    path = tmp_path / "ckpt.pt"

    def interrupted(iteration):
        if iteration == 8:
            raise KeyboardInterrupt
        return loss_fn(iteration)

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(interrupted, 12, progress=False, checkpoint=lambda: torch.save(trainer.state_dict(), path),
                    checkpoint_every=4)

    module2 = nn.Linear(1, 4, bias=False)
    resumed = Trainer(module2, lr=0.05, lr_every=3)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    assert resumed.iteration == 8
    resumed.fit(lambda i: ((module2.weight - 3.0).square().sum(), {}), 12, resume=True, progress=False)
    assert resumed.iteration == 12 and len(resumed.history) == 12
    torch.testing.assert_close(module2.weight, reference.module.weight)
    torch.testing.assert_close(resumed.averaged.weight, reference.averaged.weight)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in reference.history]


def test_ema_starts_at_the_weights_and_follows_them():
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, lr=0.3, ema_decay=0.99)
    trainer.fit(loss_fn, 1, progress=False)
    torch.testing.assert_close(trainer.averaged.weight, module.weight)  # first update copies
    trainer.fit(loss_fn, 200, progress=False)
    # The weights converge to 3; the warm-up decay lets the average forget the start quickly.
    assert (module.weight - 3).abs().max() < 0.05
    assert (trainer.averaged.weight - 3).abs().max() < 0.2
    assert not torch.equal(trainer.averaged.weight, module.weight)


def test_bad_iterations():
    module, loss_fn = quadratic_problem()
    with pytest.raises(ValueError, match="positive int"):
        Trainer(module).fit(loss_fn, 0, progress=False)


def test_deferred_steps_match_eager_steps_on_cpu():
    """The GPU path's bookkeeping (deferred loss checks, host-counted EMA) run eagerly on a CPU
    gives the weights, averages and learning rates of the ordinary loop."""
    torch.manual_seed(0)
    module, loss_fn = quadratic_problem()
    eager = Trainer(module, lr=0.05, lr_every=3, ema_decay=0.9)
    eager.fit(loss_fn, 20, progress=False)

    torch.manual_seed(0)
    module2 = nn.Linear(1, 4, bias=False)
    deferred = Trainer(module2, lr=0.05, lr_every=3, ema_decay=0.9)
    history = deferred.fit(lambda i: ((module2.weight - 3.0).square().sum(), {}), 20, progress=False,
                           graph_key=lambda i: 0, sync_every=7)
    assert [r["iteration"] for r in history] == list(range(1, 21))
    torch.testing.assert_close(module2.weight, module.weight)
    torch.testing.assert_close(deferred.averaged.weight, eager.averaged.weight)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in history]), torch.tensor([r["loss"] for r in eager.history]))


def test_deferred_steps_restore_the_last_checked_state_on_divergence(tmp_path):
    module, loss_fn = quadratic_problem()
    trainer = Trainer(module, lr=0.1)

    def poisoned(iteration):
        loss, metrics = loss_fn(iteration)
        return (loss * float("nan") if iteration >= 12 else loss), metrics

    with pytest.raises(TrainingDivergedError, match="iteration 12: the loss is nan.*those of iteration 10"):
        trainer.fit(poisoned, 30, progress=False, graph_key=lambda i: 0, sync_every=5)
    assert trainer.iteration == 10 and torch.isfinite(module.weight).all()
    with torch.no_grad():
        expected = module.weight.clone()
    assert torch.equal(trainer.averaged.weight.isfinite(), torch.ones_like(expected, dtype=torch.bool))
