"""`python -m infodyn` / `infodyn`: the Hydra entry point (see `conf/config.yaml`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from infodyn.config import CONF_DIR  # also registers ${infodyn.config_hash:} for the run dir


# An absolute config dir: the same conf/ from a source checkout (symlink) and from a wheel.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    if cfg.run.get("dry_run"):
        # `-m ... run.dry_run=true`: print each job's resolved config, train nothing
        # (Hydra 1.3 refuses `--cfg job` together with `-m`).
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True), flush=True)
        return None
    from infodyn.pipeline import run

    return run(cfg)


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
