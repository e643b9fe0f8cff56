"""The names of the runtime's two process-wide choices, torch-free so that every command's parser
can offer them without importing torch (`rad gate`, `rad report` and `rad --help` never do):
the compiled decode step (`rad.runtime.compile_mode`) and the precision policy
(`rad.runtime.precision`)."""

COMPILE_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16")
