"""Probabilistic forecasting of multivariate time series: the diffusion forecaster, data and protocols, scores,
baselines, fan charts.

>>> from sde_control.generative.timeseries import macrodata, GaussianVAR, crps_sum
>>> data = macrodata()                                   # 12 quarterly series, P = 4, 5 held-out windows
>>> context, future = data.windows(context_length=16).test_pairs()
>>> var = GaussianVAR(data.prediction_length).fit(data.train)
>>> crps_sum(var.forecast(context, num_samples=100, seed=0), future)

:mod:`.forecaster`: :class:`Forecaster`, a conditional score model of the forecast window given its context (VP, or
VSDM with a learned ``D x D`` drift across the series). :mod:`.data`: series ``(T, D)``, the gluonts protocols
(``exchange_rate_nips`` from the LSTNet file, the ``*_nips`` JSON-lines sets, statsmodels' ``macrodata``),
training/test windows and mean scaling. :mod:`.metrics`: CRPS-sum and CRPS exactly as gluonts'
``MultivariateEvaluator``, the energy score. :mod:`.baselines`: last value with bootstrapped changes, a Gaussian VAR.
:mod:`.plotting`: fan charts. :mod:`.cli`: the time-series runs of ``sde-generative``. The conditional score network
is :class:`sde_control.generative.networks.timeseries.ContextDenoiser`.
"""

from .baselines import Baseline, GaussianVAR, NaiveBootstrap
from .data import (
    ForecastDataset,
    MeanScaler,
    Windows,
    electricity_nips,
    exchange_rate_nips,
    load_gluonts,
    macrodata,
    solar_nips,
    traffic_nips,
    validate_series,
)
from .forecaster import Forecaster, ForecastTraining, WindowScaling, WindowSource
from .metrics import QUANTILES, crps, crps_sum, energy_score
from .plotting import plot_fan_chart

__all__ = ["Baseline", "ForecastDataset", "ForecastTraining", "Forecaster", "GaussianVAR", "MeanScaler",
           "NaiveBootstrap", "QUANTILES", "WindowScaling", "WindowSource", "Windows", "crps", "crps_sum",
           "electricity_nips", "energy_score", "exchange_rate_nips", "load_gluonts", "macrodata", "plot_fan_chart",
           "solar_nips", "traffic_nips", "validate_series"]
