"""A `prefect deploy` build step: which folder the workers run recfusion's flows in.

deployments/prefect.yaml's pull step changes into that folder before a worker loads a flow. It
used to read `{{ $RECFUSION_HOME }}`, which Prefect resolves only when the variable is set while
deploying; unset, the placeholder was stored as is and resolved on the worker at run time, where
it usually was not set either. This step runs at deploy time instead, so the deployment stores a
real folder, and a wrong one stops `prefect deploy` with one line saying what to set.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "RECFUSION_HOME"
#: A file every checkout has: the nightly flow's entrypoint in deployments/prefect.yaml.
ENTRYPOINT = Path("flows") / "nightly.py"


class NotACheckout(ValueError):
    """The folder the workers would run in does not hold recfusion."""


def recfusion_home() -> dict[str, str]:
    """{'directory': the checkout}: $RECFUSION_HOME when set, else where `prefect deploy` runs.

    `prefect deploy` loads the entrypoints relative to the folder it runs in, so that folder is
    a checkout already; RECFUSION_HOME names another one (e.g. where the workers' copy lives).
    """
    given = os.environ.get(HOME_ENV, "").strip()
    folder = (Path(given).expanduser() if given else Path.cwd()).resolve()
    if not (folder / ENTRYPOINT).is_file():
        where = f"{HOME_ENV}={given}" if given else f"{HOME_ENV} is not set and {folder}"
        raise NotACheckout(
            f"{where} does not hold recfusion ({ENTRYPOINT} is missing): run `prefect deploy` "
            f"from the recfusion checkout, or set {HOME_ENV} to the checkout the workers run from"
        )
    print(f"recfusion: workers will run the flows in {folder}")
    return {"directory": str(folder)}
