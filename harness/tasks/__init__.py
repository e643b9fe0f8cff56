"""Evaluation: one module per task behind one `Task` interface (`base`), their data (`data`),
batched generation and scoring on the rad runtime (`batching`), lm-eval's task machinery and our
backend for it (`lm_eval_task`, `lm_backend`), contained code execution (`sandbox`), fidelity to
a teacher (`fidelity`) and `rad eval` itself (`evaluate`).

Importing this package registers every task. To add a task: write `harness/tasks/<name>.py`
(its `TaskData` and a `Task` subclass that registers itself) and import it here.
"""

# Registration on import, in the order tasks are listed (`rad data check`, error messages).
# isort: off
from harness.tasks import gsm8k  # noqa: F401
from harness.tasks import math500  # noqa: F401
from harness.tasks import humaneval  # noqa: F401
from harness.tasks import cruxeval  # noqa: F401
from harness.tasks import piqa  # noqa: F401
from harness.tasks import winogrande  # noqa: F401
from harness.tasks import lambada  # noqa: F401
# isort: on
