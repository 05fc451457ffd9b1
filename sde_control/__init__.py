"""sde-control: sampling and generative modelling as stochastic optimal control.

The sampler side: :class:`PIS`, :class:`DIS`, :class:`DDS`, :class:`Bridge`, :class:`CMCD` draw samples from an
unnormalised density (a :class:`~sde_control.target.Target`) and estimate its log normalising constant.
:mod:`sde_control.targets` holds the benchmark densities and :mod:`sde_control.generative` the
generative diffusion models.
"""

from pathlib import Path as _Path

# The repository keeps targets/, generative/ and configs/ beside this folder, and an install maps them to
# sde_control.targets, .generative and .configs (pyproject.toml's package-dir). Where this folder is imported
# straight from a checkout (Python run from the repository's root puts it first on sys.path, before any
# installed copy), the checkout's root joins __path__ so that the same names resolve to those sibling folders.
# Installed copies hold the subpackages inside this folder and are left alone.
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "targets").is_dir() and (_root / "targets" / "__init__.py").is_file() \
        and (_root / "pyproject.toml").is_file():
    __path__.append(str(_root))

from .estimators import LogZEstimate
from .samplers import CMCD, DDS, DIS, PIS, Bridge, Sampler
from .target import Target, TargetError
from .training import TrainingDivergedError

__all__ = ["Bridge", "CMCD", "DDS", "DIS", "PIS", "LogZEstimate", "Sampler", "Target", "TargetError", "TrainingDivergedError"]
__version__ = "0.1.0"
