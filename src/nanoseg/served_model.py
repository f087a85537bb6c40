"""The served model's code, logged with every model version (MLflow "models from code").

``mlflow.pyfunc.log_model(python_model=<this file>, ...)`` copies this file into the model; loading
the model runs it, and :func:`mlflow.models.set_model` hands MLflow the model object. Nothing is
pickled: the model version holds this text, the weights (``artifacts/<folder>/model.keras``, loaded
by Keras in safe mode) and ``nanoseg.json``. The code itself is the installed nanoseg's
(:class:`nanoseg.serving.pyfunc.NanosegPyfunc`); ``nanoseg serve`` serves a version through this file only
when the copy in the registry is byte for byte this one (:func:`nanoseg.serving.pyfunc.servable_model`).
"""

import mlflow

from nanoseg.serving.pyfunc import NanosegPyfunc

mlflow.models.set_model(NanosegPyfunc())
