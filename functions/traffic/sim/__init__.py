"""The smart-traffic simulation: SUMO, junction cameras and signal control, as a mesh plugin.

A scenario names it with ``simulation: {plugin: functions.traffic.sim:plugin, ...}``
(see :mod:`functions.traffic.sim.config` for the settings). Modules:

* ``plugin`` — the :class:`~mesh.scenario.SimulationPlugin` (check, prepare,
  start, step, stop, KPIs, report section);
* ``config`` — its settings; ``kpis`` — traffic KPIs and the report section;
* ``network`` — the SUMO grid and demand; ``session`` — a SUMO run;
  ``actuator`` — its signal actuator bridge; ``records`` — observations and
  KPIs; ``live`` — stepping SUMO with cameras and plans;
* ``camera`` — frames out, counts in (to the signal controller);
* ``history`` — recorded days for the forecaster; ``forecast_feed`` — live
  forecasts through the gateway.
"""

from functions.traffic.sim.plugin import SumoTraffic, plugin

__all__ = ["SumoTraffic", "plugin"]
