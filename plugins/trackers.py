"""The built-in experiment trackers (`zoo-adapt finetune --log NAME`): TensorBoard,
MLflow and Weights & Biases, registered like any third party's. Each tracker's package
is an extra of zoo-adapt and is imported only when a run uses it."""

from zoo_adapt.plugin_api import hookimpl


def make_tensorboard():
    from ._tensorboard import TensorBoardTracker

    return TensorBoardTracker()


def make_mlflow():
    from ._mlflow import MLflowTracker

    return MLflowTracker()


def make_wandb():
    from ._wandb import WandbTracker

    return WandbTracker()


@hookimpl
def register_trackers(register):
    register(
        "tensorboard",
        make_tensorboard,
        "TensorBoard event files in RUN/tensorboard/: scalars per step and "
        "epoch, learning rates per group, the plots as images",
        requires=("tensorboard",),
        install='pip install "zoo-adapt[tensorboard]"',
    )
    register(
        "mlflow",
        make_mlflow,
        "MLflow run: options as params, metrics, plots and run files as artifacts, the model as an MLflow "
        "model; $MLFLOW_TRACKING_URI or sqlite:///mlflow.db",
        requires=("mlflow", "sqlalchemy", "alembic", "pandas"),  # the SQLite store; MLflow models need pandas
        install='pip install "zoo-adapt[mlflow]"',
    )
    register(
        "wandb",
        make_wandb,
        "Weights & Biases run (WANDB_MODE=offline writes RUN/wandb/ without a "
        "network): config, metrics, images, the run files as a model artifact",
        requires=("wandb",),
        install='pip install "zoo-adapt[wandb]"',
    )
