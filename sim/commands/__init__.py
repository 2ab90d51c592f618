"""Sub-command groups of ``simlb`` beyond run/validate/strategies, one module each.

Each module listed in ``COMMAND_MODULES`` defines a click command or group named ``command``;
``sim.cli`` adds them to the main group. Modules import heavy dependencies inside their
functions so that ``simlb --help`` stays fast.
"""

COMMAND_MODULES: tuple[str, ...] = (
    "sim.commands.report",
    "sim.commands.profile",
    "sim.commands.trace",
    "sim.commands.fidelity",
    "sim.commands.calibrate",
    "sim.commands.sweep",
    "sim.commands.capacity",
)
