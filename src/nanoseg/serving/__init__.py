"""The served model: request/answer payload, the MLflow pyfunc, the service and its HTTP server."""
