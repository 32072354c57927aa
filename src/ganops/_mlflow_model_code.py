"""MLflow *models from code* entry: the file MLflow executes to build the generator pyfunc (see pyfunc_model.py)."""

import mlflow

from ganops.pyfunc_model import GeneratorPyfunc

mlflow.models.set_model(GeneratorPyfunc())
