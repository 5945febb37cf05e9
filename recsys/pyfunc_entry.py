"""The MLflow "model from code" entry: logged as a script, so no pickle is stored.

MLflow copies this file into the logged model and runs it when loading; it names the
model class (:class:`recsys.serving.RecsysModel`), which reads the bundled folder.
"""

import mlflow

from recsys.serving import RecsysModel

mlflow.models.set_model(RecsysModel())
