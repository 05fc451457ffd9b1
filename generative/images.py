r"""Images: score models (VP, VSDM with ``A_t`` diagonal in a basis, CLD and the MDM diffusions with their auxiliary
variables as extra channels of the U-Net, :func:`image_network`) trained on image data by the core trainer, on one
process or many, with sample grids, logs, resumable checkpoints and FID.

    sde-generative data=digits model=vsdm                                  # the embedded digits, CPU, minutes
    torchrun --nproc_per_node=8 -m sde_control.generative data=cifar10 data.root=~/data model=vsdm preset=paper \
        hydra.run.dir=runs/cifar10-vsdm                                     # 8 GPUs, the paper's budget
    sde-generative task=fid hydra.run.dir=runs/cifar10-vsdm data=cifar10 data.root=~/data fid.inception=PATH

What a run does (:func:`train`):

* **Distributed data parallel.** Under ``torchrun`` every process joins the process group (:func:`session`: NCCL on
  GPUs, gloo on CPUs; multi-node through torchrun's rendezvous, e.g. ``--nnodes=2 --rdzv-backend=c10d
  --rdzv-endpoint=HOST:PORT``), the trainer wraps the network in ``DistributedDataParallel``
  (:attr:`~sde_control.training.Trainer.training_module`), and each rank reads its share of every global batch
  (:class:`~sde_control.generative.data.images.StreamBatchSampler`). ``train.batch_size`` is the **global** batch:
  per GPU x GPUs x ``train.accumulation`` micro-batches.
* **Randomness.** Before each micro-batch the process seeds torch from ``(seed, rank, step, micro-batch)``: the
  dequantisation noise, flips, times, noise and dropout of a step are a function of its position, so a resumed run
  draws exactly what the uninterrupted one would have drawn (the checkpoint's data position is its step, and its
  RNG state is this rule; nothing else to store), and every rank draws its own. ``images.shared_noise`` draws the
  noise of the whole global batch from ``(seed, step)`` on every rank and slices each rank's rows instead: the same
  numbers on any number of ranks (the parity test of distributed training uses it).
* **Mixed precision.** ``images.precision=auto``: bfloat16 autocast on GPUs that have it (Ampere and later),
  float16 autocast with a gradient scaler on the others (V100), float32 on CPUs; TF32 matrix products on
  (``images.tf32``). Non-finite steps are skipped within ``train.nonfinite_patience``.
* **Files** (rank 0, in the run directory): ``checkpoint.pt`` every ``images.checkpoint_images`` images, at the end
  and when interrupted (Ctrl-C, or the SIGTERM of a scheduler: a preempted Slurm job resumes); ``samples.png``, a grid
  of samples of the averaged network, and ``grids/<images>.png`` every ``images.sample_images`` images;
  ``metrics.csv`` (and TensorBoard events with ``images.tensorboard``). Started again in the same directory with the
  same settings (more iterations allowed) it resumes; all ranks load the same checkpoint.
* **VSDM's stages** run inside the distributed loop: after every ``images.stage_iterations`` score steps, the
  forward update (:meth:`~sde_control.generative.vsdm.VSDM.update_forward`) from ``train.paths`` backward paths
  split over the ranks, whose statistics are summed, so every rank takes the same step.

FID (:func:`evaluate`): samples of the checkpoint's averaged network with each sampler and step count, generated in
batches on every rank, scored against the training set (features cached) by the TF-FID Inception (a local weights
file) or, on the digits, by the classifier's Frechet distance (:mod:`sde_control.generative.evaluation`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sde_control import checkpoints

from .data.images import ImageDataset, Images, image_loader, random_hflip
from .evaluation.fid import RandomFeatures, features_of, image_scores, reference_cache_path, reference_features
from .networks.unet import UNet
from .sampling import check_method
from .score_matching import sample_times
from .score_model import ScoreModel, ScoreTraining
from .vsdm import VSDM, equal_budget_config

__all__ = ["FIDOptions", "ImageOptions", "SAMPLERS", "Session", "evaluate", "generate", "image_network",
           "resolve_precision", "sample", "save_grid", "session", "step_seed", "train", "training_config"]

CHECKPOINT, GRID, METRICS, GRIDS, SCORES = "checkpoint.pt", "samples.png", "metrics.csv", "grids", "fid.json"
NETWORKS = ("auto", "ddpm", "tiny", "mlp")
SAMPLERS = ("em", "ode", "gddim")
_FORWARD = 1 << 30  # the seed stream of the forward updates, apart from the steps'


@dataclass
class ImageOptions:
    """The ``images`` section of the command line: what an image run needs besides the model and ``train``.

    Args:
        network: the U-Net: ``"ddpm"`` (Ho et al.'s CIFAR-10 network, :meth:`UNet.ddpm`), ``"tiny"`` (a CPU size),
            ``"auto"`` (ddpm for image sides of 16 and more, else tiny); ``"mlp"`` makes the command line fit the
            images as vectors with a Fourier-feature MLP instead (:func:`sde_control.generative.cli.as_vectors`).
        network_options: overrides of the U-Net's arguments (``channels``, ``dropout``, ...).
        basis: VSDM's ``A_t`` is diagonal in it: ``"dct"`` or ``"pixel"`` (:mod:`sde_control.generative.diagonal`).
        stage_iterations: score steps per VSDM stage (``train.stages = train.iterations / stage_iterations``);
            ``None`` keeps ``train.stages``. The VP baseline takes its learning-rate steps at the same points.
        ema_halflife_images: the EMA's half-life in images (EDM's practice); ``None`` keeps the model's
            ``ema_decay`` (DDPM: 0.9999 per step).
        precision: ``"auto"`` (module docstring), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        tf32: allow TF32 matrix products and convolutions on GPUs.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` where there is a GPU, else the CPU), or a device.
        workers: data-loading processes per rank (decoding image folders; the in-memory sets need none).
        hflip: random horizontal flips; ``None``: the data set's own setting (true for CIFAR-10).
        checkpoint_images, sample_images: images between checkpoints and between sample grids.
        grid, grid_steps, grid_method: samples in a grid, their steps and sampler (:func:`sample`).
        shared_noise: draw each global batch's noise once and slice it per rank (module docstring).
        tensorboard: also write TensorBoard events (needs the tensorboard package).
    """

    network: str = "auto"
    network_options: dict[str, Any] = field(default_factory=dict)
    basis: str = "dct"
    stage_iterations: int | None = None
    ema_halflife_images: float | None = None
    precision: str = "auto"
    tf32: bool = True
    device: str = "auto"
    workers: int = 4
    hflip: bool | None = None
    checkpoint_images: int = 100_000
    sample_images: int = 100_000
    grid: int = 64
    grid_steps: int = 100
    grid_method: str = "em"
    shared_noise: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"images.network must be one of {NETWORKS}, got {self.network!r}")
        for name in ("checkpoint_images", "sample_images", "grid", "grid_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"images.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.stage_iterations is not None and self.stage_iterations < 1:
            raise ValueError(f"images.stage_iterations must be a positive int or null, got {self.stage_iterations}")


@dataclass
class FIDOptions:
    """The ``fid`` section: scoring a trained run (:func:`evaluate`).

    Args:
        checkpoint: the checkpoint to score; ``None``: ``checkpoint.pt`` of the run directory.
        samples: generated images per sampler and step count (the literature's FID: 50,000), split over the ranks.
        batch: images generated at once on each rank.
        methods: samplers (:func:`sample`: ``em`` Euler-Maruyama on the reverse SDE, ``ode`` the probability flow,
            ``gddim`` the exponential integrator).
        steps: step counts (one NFE sweep point each).
        extractor: ``"inception"`` (the TF-FID Inception-v3, FID proper), ``"classifier"`` (the digits
            classifier: the Frechet distance in its features), ``"random"`` (a fixed random network: smoke tests
            only), ``"auto"`` (classifier on the digits, else inception).
        inception: the local file ``pt_inception-2015-12-05-6726825d.pth`` (needed for ``inception``).
        cache: folder of the cached reference features and classifier; ``None``: the run directory.
        kid_subset_size: images per KID subset (capped by the sample counts).
        seed: of the generated samples (rank ``r`` uses ``seed + r``).
    """

    checkpoint: str | None = None
    samples: int = 50_000
    batch: int = 250
    methods: list[str] = field(default_factory=lambda: ["em", "ode", "gddim"])
    steps: list[int] = field(default_factory=lambda: [200])
    extractor: str = "auto"
    inception: str | None = None
    cache: str | None = None
    kid_subset_size: int = 1000
    seed: int = 0


# ---------------------------------------------------------------------------------------------- processes and ranks
@dataclass(frozen=True)
class Session:
    """This process's place: ``rank`` of ``world_size`` (0 of 1 without torchrun) and its ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes the files (rank 0)."""
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object, e.g. the run directory)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Session]:
    """Join ``torchrun``'s process group when launched by it (its environment names ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK``; also with one process, so that the distributed path runs), or, under Slurm with several tasks
    (submitit), the group of the job's tasks: NCCL on CUDA, gloo on CPUs. The device is ``cuda:LOCAL_RANK`` where
    there is a GPU (``device="auto"``), else the CPU. The group is left at exit."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        _export_slurm_tasks()
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    joined = launched and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        if dist.is_initialized():
            yield Session(dist.get_rank(), dist.get_world_size(), device)
        else:
            yield Session(0, 1, device)
    finally:
        if joined:
            dist.destroy_process_group()


def _export_slurm_tasks() -> None:
    """Under Slurm with one task per GPU (Hydra's submitit launcher with ``tasks_per_node = gpus_per_node``), set
    ``torch.distributed``'s variables from Slurm's (submitit's ``TorchDistributedEnvironment``)."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("several Slurm tasks but no torchrun: launch through Hydra's submitit launcher "
                           "(pip install hydra-submitit-launcher), or torchrun from the job script") from None
    submitit.helpers.TorchDistributedEnvironment().export()


def resolve_precision(requested: str, device: torch.device) -> str:
    """``"auto"``: ``bfloat16`` on GPUs that support it, ``float16`` (with the gradient scaler) on older ones, such
    as the V100, which has no bfloat16; ``float32`` on CPUs. Other values are returned as given."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


def step_seed(*keys: int) -> int:
    """A 63-bit seed from integers (``numpy.random.SeedSequence``: distinct keys give independent streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------- models
def image_network(image_shape: tuple[int, int, int], kind: str = "auto", aux: int = 0, **options: Any) -> UNet:
    """The U-Net for images of ``image_shape`` (:class:`ImageOptions`'s ``network`` and ``network_options``).

    With ``aux`` auxiliary variables per coordinate (CLD's velocity, the MDM diffusions' blocks) the state of
    ``(1 + aux) C H W`` channels (:mod:`~sde_control.generative.augmented`: the data block first, then each auxiliary
    block, each ``C H W`` in the image's layout) is an image of ``(1 + aux) C`` channels: the U-Net takes and predicts
    the noise of all of them (the hybrid parameterisation ``s = -L^{-T} eps`` needs every block's)."""
    if kind not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {kind!r}")
    if kind == "mlp":
        raise ValueError("network='mlp' fits images as vectors (the command line's vector path), not with a U-Net")
    if kind == "auto":
        kind = "ddpm" if min(image_shape[1:]) >= 16 else "tiny"
    channels, height, width = image_shape
    return (UNet.ddpm if kind == "ddpm" else UNet.tiny)(((1 + aux) * channels, height, width), **options)


def training_config(model: ScoreModel, options: dict[str, Any], stage_iterations: int | None = None) -> ScoreTraining:
    """The model's training configuration from the ``train`` section (:class:`VSDMTraining`'s fields): VSDM keeps
    them all; a plain score model drops the stage and forward-update fields and takes its learning-rate steps where
    VSDM's stages end (the equal budget of :func:`~sde_control.generative.vsdm.fit_equal_budget`).
    ``stage_iterations`` sets ``stages = iterations / stage_iterations``."""
    if stage_iterations is not None:
        if options["iterations"] % stage_iterations:
            raise ValueError(f"train.iterations = {options['iterations']} must be a multiple of "
                             f"images.stage_iterations = {stage_iterations}")
        options = {**options, "stages": options["iterations"] // stage_iterations}
    return equal_budget_config(model, **options)


# ---------------------------------------------------------------------------------------------- training
class _ImageLoss:
    """The loss of one micro-batch of this rank's stream (module docstring: seeds and shared noise): the model's
    training objective (:meth:`~sde_control.generative.ScoreModel.training_objective`: DSM, or the ELBO of MDM) on
    the flattened images."""

    def __init__(self, model: ScoreModel, data: Images, batches: Iterator[Tensor], config: ScoreTraining,
                 session: Session, seed: int, hflip: bool, shared_noise: bool):
        self.model, self.transform, self.batches = model, data.transform, batches
        self.config, self.session, self.seed, self.hflip, self.shared = config, session, seed, hflip, shared_noise
        self.shape = data.shape
        self.objective = model.training_objective(config)
        if shared_noise and model.objective_of(config) != "dsm":
            raise ValueError("images.shared_noise slices the times and noise of denoising score matching: it needs "
                             "train.objective=dsm (the ELBO draws its own)")
        self.iteration, self.micro = -1, 0

    def __call__(self, iteration: int) -> tuple[Tensor, dict[str, float]]:
        self.micro = self.micro + 1 if iteration == self.iteration else 0
        self.iteration = iteration
        levels = next(self.batches).to(self.session.device, non_blocking=True)
        if self.shared:
            return self._shared(iteration, levels), {}
        torch.manual_seed(step_seed(self.seed, self.session.rank, iteration, self.micro))
        x = self.transform.to_model(levels)
        if self.hflip:
            x = random_hflip(x)
        return self.objective(iteration, x.flatten(1)), {}

    def _shared(self, iteration: int, levels: Tensor) -> Tensor:
        """The loss with this rank's rows of noise drawn for the whole global batch from ``(seed, step)``."""
        n, world = levels.shape[0], self.session.world_size
        generator = torch.Generator().manual_seed(step_seed(self.seed, iteration))
        size = self.config.batch_size
        draws = (torch.rand(size, *self.shape, generator=generator), torch.rand(size, generator=generator) < 0.5,
                 sample_times(size, self.model.sde.T, self.model.t_min, generator),
                 torch.randn(size, self.model.state_dim, generator=generator))
        rows = slice((self.micro * world + self.session.rank) * n, (self.micro * world + self.session.rank + 1) * n)
        noise, flip, t, eps = (d[rows].to(self.session.device) for d in draws)
        x = self.transform.to_model(levels, noise=noise)
        if self.hflip:
            x = random_hflip(x, flip=flip)
        return self.model.loss(x.flatten(1), network=self.model._training_network, t=t, eps=eps)


class _ScalarLog:
    """The history's records in ``metrics.csv`` (and TensorBoard events), rank 0. The first write rewrites the file
    from the history (a resumed run's checkpoint holds every kept record, and rows written after it are dropped);
    later writes append the new records."""

    COLUMNS = ("iteration", "images", "loss", "grad_norm", "lr", "time", "skipped", "forward_objective")

    def __init__(self, directory: Path, batch_size: int, tensorboard: bool):
        self.path, self.batch_size, self.written = directory / METRICS, batch_size, 0
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        self.fresh = True

    def write(self, history: list[dict[str, Any]]) -> None:
        new = history if self.fresh else history[self.written:]
        with open(self.path, "w" if self.fresh else "a", newline="") as file:
            writer = csv.DictWriter(file, self.COLUMNS, extrasaction="ignore")
            if self.fresh:
                writer.writeheader()
            for record in new:
                writer.writerow({**record, "images": record["iteration"] * self.batch_size})
                if self.writer is not None:
                    for key in ("loss", "grad_norm", "lr", "forward_objective"):
                        if key in record:
                            self.writer.add_scalar(key, record[key], record["iteration"] * self.batch_size)
        self.fresh, self.written = False, len(history)
        if self.writer is not None:
            self.writer.flush()


def save_grid(images: Tensor, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Write uint8 images ``(n, C, H, W)`` (C = 1 or 3, values 0..255) as one PNG grid (one-pixel gaps; images
    smaller than 32 pixels enlarged by an integer factor, nearest neighbour)."""
    import matplotlib.image

    factor = max(1, 32 // max(images.shape[-2:]))
    images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    n, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = torch.full((channels, rows * (height + 1) + 1, columns * (width + 1) + 1), 255, dtype=torch.uint8)
    for index, image in enumerate(images.cpu()):
        r, c = divmod(index, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        canvas[:, top:top + height, left:left + width] = image
    array = canvas.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, array[..., 0] if channels == 1 else array, cmap="gray", vmin=0, vmax=255)
    return path


@torch.no_grad()
def sample(model: ScoreModel, n: int, steps: int, method: str = "em", seed: int | None = None) -> Tensor:
    """``n`` samples ``(n, dim)`` of the model's averaged network from the prior ``N(0, I)`` by ``steps`` steps of a
    sampler that integrates the model's own forward process (VSDM's learned ``A_t`` included):

    * ``"em"``: Euler-Maruyama on the reverse SDE (the VSDM paper's sampler, 200 steps);
    * ``"ode"``: Euler on the probability-flow ODE;
    * ``"gddim"``: gDDIM's deterministic exponential integrator of order 1 on its quadratic time grid
      (:func:`~sde_control.generative.gddim.gddim_sample`; for a process diagonal in a basis its closed form per
      coordinate, :func:`~sde_control.generative.diagonal.exponential_sample`; for VP it is DDIM).

    Each uses one score evaluation per step (the model's ``last_nfe``): all through the model's one entry point,
    :meth:`~sde_control.generative.model.GenerativeModel.sample`, em and ode on the uniform grid.
    """
    check_method(method, SAMPLERS)
    return model.sample(n, steps, method=method, grid="quadratic" if method == "gddim" else "uniform", seed=seed)


@torch.no_grad()
def generate(model: ScoreModel, data: Images, n: int, steps: int, method: str, seed: int,
             batch: int = 500) -> Tensor:
    """``n`` samples (:func:`sample`) of the model's averaged network as uint8 images ``(n, C, H, W)`` (0..255), in
    batches of ``batch``, from ``seed`` (batch ``i`` from ``seed + i``)."""
    out = []
    for index, start in enumerate(range(0, n, batch)):
        y = sample(model, min(batch, n - start), steps, method, seed=seed + index)
        levels = data.transform.from_model(y.reshape(-1, *data.shape).float())
        out.append(data.transform.to_uint8(levels).cpu())
    return torch.cat(out)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """A scheduler's SIGTERM (Slurm's preemption notice) raises ``KeyboardInterrupt``, so the trainer writes its
    checkpoint before the process ends (main thread only)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(model: ScoreModel, data: Images, config: ScoreTraining, options: ImageOptions | None = None,
          run_dir: str | os.PathLike = ".", session: Session | None = None, seed: int = 0) -> dict[str, Any]:
    """Train ``model`` on ``data`` for ``config.iterations`` global steps of ``config.batch_size`` images, resuming
    ``run_dir/checkpoint.pt`` if it holds this run (module docstring). ``session``: this process's rank and device
    (default: one process, on the GPU if there is one). Returns a summary (steps, images, the last loss, stages of
    VSDM); rank 0 writes the files."""
    options = ImageOptions() if options is None else options
    if session is None:
        session = Session(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(run_dir)
    if session.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(options.precision, session.device)
    micro = config.batch_size // (session.world_size * config.accumulation)
    if micro * session.world_size * config.accumulation != config.batch_size:
        raise ValueError(f"train.batch_size = {config.batch_size} is the global batch: it must be a multiple of the "
                         f"{session.world_size} ranks x train.accumulation = {config.accumulation}")
    config = dataclasses.replace(config, precision=precision)
    if session.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = options.tf32
    if model.device != session.device:
        model.to(session.device)
    path = run_dir / CHECKPOINT
    resumed = _resume(model, config, path, seed, session)
    model.training_config = config
    trainer = model.trainer
    hflip = data.hflip if options.hflip is None else options.hflip
    loader = image_loader(data, config.batch_size, rank=session.rank, world_size=session.world_size,
                          accumulation=config.accumulation, seed=seed, start=trainer.iteration,
                          num_workers=0 if isinstance(data, ImageDataset) else options.workers, device=session.device)
    loss = _ImageLoss(model, data, iter(loader), config, session, seed, hflip, options.shared_noise)
    every = max(1, options.checkpoint_images // config.batch_size)
    grid_every = max(1, options.sample_images // config.batch_size)
    log = _ScalarLog(run_dir, config.batch_size, options.tensorboard) if session.main else None

    def write_grid(iteration: int) -> None:
        grid = generate(model, data, options.grid, options.grid_steps, options.grid_method, seed)
        save_grid(grid, run_dir / GRIDS / f"{iteration * config.batch_size:012d}.png")
        save_grid(grid, run_dir / GRID)

    def between_steps() -> dict[str, float]:
        iteration = trainer.iteration
        metrics = _finish_stages(model, config, iteration, seed, session)
        if session.main:
            if iteration % grid_every == 0 or iteration == trainer.run["start"] + config.iterations:
                write_grid(iteration)
            log.write(trainer.history)
        return metrics

    def save() -> None:
        if session.main:
            checkpoints.save(path, {**model.checkpoint_header(config), "state": model.state_dict(),
                                    "run": _run_record(model, config, seed, session)})

    if isinstance(model, VSDM):
        _finish_stages(model, config, trainer.iteration, seed, session)  # a stage ended just before an interruption
    with _sigterm_interrupts():
        trainer.fit(loss, dataclasses.replace(config, checkpoint_every=every), resume=resumed,
                    description=f"{type(model).__name__} on {type(data).__name__}", evaluate=between_steps,
                    evaluate_every=1, checkpoint=save, unit="img", unit_scale=config.batch_size)
    if session.main:
        log.write(trainer.history)
        if not (run_dir / GRID).is_file():
            write_grid(trainer.iteration)
    session.barrier()
    last = trainer.history[-1] if trainer.history else {}
    return {"iterations": trainer.iteration, "images": trainer.iteration * config.batch_size,
            "loss": last.get("loss"), "precision": precision, "world_size": session.world_size,
            "stages": getattr(model, "stages", None)}


def _run_record(model: ScoreModel, config: ScoreTraining, seed: int, session: Session) -> dict[str, Any]:
    """What a checkpoint adds about the run: the data position (the step: the stream is a function of it) and the
    seed rule; the number of ranks it ran on (a resume may use another)."""
    return {"seed": seed, "step": model.trainer.iteration, "images": model.trainer.iteration * config.batch_size,
            "world_size": session.world_size, "rng": "torch.manual_seed(step_seed(seed, rank, step, micro_batch))"}


def _resume(model: ScoreModel, config: ScoreTraining, path: Path, seed: int, session: Session) -> bool:
    """Load ``path`` into ``model`` on every rank if it holds this run (refused, naming the differences, if not)."""
    if not path.is_file():
        return False
    data = checkpoints.load(path, map_location=session.device)
    checkpoints.check_resumable(path, {k: data[k] for k in ("model", "spec", "training")},
                                model.checkpoint_header(config), type(config).RESUMABLE + ("precision", "accumulation"))
    saved_seed = data.get("run", {}).get("seed")
    if saved_seed != seed:
        raise checkpoints.CheckpointError(f"{path} was trained with seed {saved_seed}, not {seed}: a resumed run "
                                          "continues the same random stream; give the same seed")
    model.load_state_dict(data["state"])
    return True


def _finish_stages(model: ScoreModel, config: ScoreTraining, iteration: int, seed: int,
                   session: Session) -> dict[str, float]:
    """VSDM: the forward updates of the stages whose score steps are done (the last stage has none); every rank
    takes part (the paths are split and their statistics summed)."""
    if not isinstance(model, VSDM):
        return {}
    length = config.iterations // config.stages
    metrics = {}
    while model.stage < min(iteration // length, config.stages):
        stage = model.stage
        record: dict[str, Any] = {"stage": stage + 1, "iteration": iteration}
        if stage < config.stages - 1 and config.forward_iterations > 0:
            torch.manual_seed(step_seed(seed, session.rank, _FORWARD, stage))
            record["forward_objective"] = metrics["forward_objective"] = model.update_forward(config, stage)
            record["eigenvalues"] = model.sde.weight.detach().mean(-1).tolist()  # mean lambda per piece
        model.stages.append(record)
        model.stage = stage + 1
    return metrics


# ---------------------------------------------------------------------------------------------- FID
def _extractor(options: FIDOptions, data: Images, digits: dict[str, Any] | None, cache: Path,
               device: torch.device) -> nn.Module:
    kind = options.extractor
    if kind == "auto":
        kind = "classifier" if digits is not None else "inception"
    if kind == "inception":
        from .evaluation.fid import INCEPTION_HELP, InceptionFeatures

        if options.inception is None:
            raise ValueError(f"FID needs fid.inception=PATH: {INCEPTION_HELP}")
        return InceptionFeatures(options.inception).to(device).eval()
    if kind == "classifier":
        if digits is None:
            raise ValueError("fid.extractor=classifier is the digits classifier: it needs data=digits")
        from .evaluation.classifier import digit_classifier

        name = f"digit-classifier-{digits['channels']}x{digits['image_size']}-{digits['resize']}.pt"
        return digit_classifier(cache / name, digits["image_size"], digits["channels"], digits["resize"]).to(device)
    if kind == "random":
        return RandomFeatures(data.shape[0]).to(device)
    raise ValueError(f"fid.extractor must be auto, inception, classifier or random, got {kind!r}")


def evaluate(model: ScoreModel, data: Images, options: FIDOptions, run_dir: str | os.PathLike, session: Session,
             name: str, digits: dict[str, Any] | None = None, held_out: Images | None = None) -> list[dict[str, Any]]:
    """Score ``model`` with each sampler and step count of ``options`` against the training images ``data`` (called
    ``name`` in the cache of reference features): FID and KID (or the digits classifier's Frechet distance),
    ``options.samples`` images split over the ranks. With ``held_out`` (the digits' held-out split) the same distance
    of held-out images to the training set is reported as the floor. Rank 0 writes ``fid.json`` and ``fid.md``;
    returns the rows."""
    run_dir = Path(run_dir)
    cache = Path(options.cache).expanduser() if options.cache else run_dir
    if session.main:  # rank 0 trains (and caches) the digits classifier, if needed, before the others read it
        extractor = _extractor(options, data, digits, cache, session.device)
    session.barrier()
    if not session.main:
        extractor = _extractor(options, data, digits, cache, session.device)
    if session.main:  # the reference enters the metrics on rank 0 only (image_scores)
        reference = reference_features(_all_images(data), extractor,
                                       reference_cache_path(cache, name, data.shape[-1], extractor))
    else:
        reference = features_of([next(_all_images(data, 1))], extractor)[:0]
    share = options.samples // session.world_size + (session.rank < options.samples % session.world_size)
    rows = []
    for method in options.methods:
        for steps in options.steps:
            images = generate(model, data, share, steps, method, options.seed + 1000 * session.rank, options.batch)
            scores = image_scores(images.split(options.batch), reference, extractor, batch_size=options.batch,
                                  kid_subset_size=options.kid_subset_size, seed=options.seed)
            rows.append({"method": method, "steps": steps, **dataclasses.asdict(scores)})
    if held_out is not None:
        held = _all_images(held_out, rank=session.rank, world_size=session.world_size)
        scores = image_scores(held, reference, extractor, batch_size=options.batch,
                              kid_subset_size=options.kid_subset_size, seed=options.seed)
        rows.append({"method": "held-out data", "steps": 0, **dataclasses.asdict(scores)})
    if session.main:
        (run_dir / SCORES).write_text(json.dumps(rows, indent=2) + "\n")
        (run_dir / "fid.md").write_text(format_scores(rows) + "\n")
    return rows


def _all_images(data: Images, batch: int = 500, rank: int = 0, world_size: int = 1) -> Iterator[Tensor]:
    """The images of ``data`` (rank ``r`` of ``world_size``: those with index ``r`` modulo ``world_size``) as uint8
    pixel batches (0..255)."""
    indices = list(range(rank, len(data), world_size))
    for start in range(0, len(indices), batch):
        levels = torch.stack([data[i] for i in indices[start:start + batch]])
        yield data.transform.to_uint8(levels)


def format_scores(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`evaluate`'s rows (the Frechet distance is FID with the Inception features)."""
    lines = ["| sampler | steps (NFE) | Frechet distance | KID | samples | features |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['fid']:.4g} | {r['kid']:.3g} ± {r['kid_std']:.2g} | "
                     f"{r['samples']} | {r['implementation']} |")
    return "\n".join(lines)


def load_model(path: str | os.PathLike, device: torch.device) -> ScoreModel:
    """The model of a checkpoint, on ``device`` (scores and samples use its averaged network)."""
    return ScoreModel.load(path).to(device)
