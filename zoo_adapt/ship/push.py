"""`zoo-adapt push`: upload a run folder to the Hugging Face Hub with huggingface_hub
(model, model card, timm config, ONNX, metrics, plots, analysis; never the checkpoint,
the lock or the trackers' folders). Offline, or without a token, it is one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zoo_adapt.errors import ZooAdaptError, first_line
from zoo_adapt.ship.export import read_card
from zoo_adapt.ship.model_card import write_hub_files
from zoo_adapt.zoo.hub import reachable

IGNORE = [
    "checkpoint.pt",
    ".zoo-adapt.lock",
    ".*",
    "*.zoo-tmp",
    "tensorboard/*",
    "wandb/*",
    "mlruns/*",
    "adaptation.safetensors",
]


def push_run(
    run: str | Path,
    repo: str,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Upload the run folder `run` (or the folder of a model.safetensors) to the Hub
    repository `repo` ("user/name"), creating it if needed; returns its URL."""
    run = Path(run)
    if run.is_file():
        run = run.parent
    if not (run / "model.safetensors").is_file():
        raise ZooAdaptError(f"{run} holds no model.safetensors: push a run folder written by zoo-adapt finetune")
    if not repo or repo.count("/") > 1 or repo.strip("/") != repo or " " in repo:
        raise ZooAdaptError(f"--repo takes a Hub repository name, NAME or USER/NAME, not {repo!r}")
    read_card(run / "model.safetensors")  # a zoo-adapt model, header checked
    if not (run / "README.md").is_file():
        write_hub_files(run, log=log)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ZooAdaptError('push needs the package huggingface_hub: pip install "zoo-adapt[hub]"') from None
    if not reachable("huggingface.co"):
        raise ZooAdaptError(
            f"cannot push {run} to {repo}: huggingface.co is unreachable (offline, or "
            "HF_HUB_OFFLINE is set); push again when online"
        )
    api = HfApi(token=token, library_name="zoo-adapt")
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=url.repo_id,
            folder_path=str(run),
            ignore_patterns=IGNORE,
            commit_message=message or f"zoo-adapt: upload {run.name}",
        )
    except Exception as e:
        raise ZooAdaptError(f"cannot push {run} to {repo}: {first_line(e)[:300]}") from e
    if log:
        log(f"pushed {run} to {url}")
    return str(url)
