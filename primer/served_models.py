"""The served models' import path before primer/ was grouped into subpackages.

An MLflow pyfunc model names its class by import path, so the models logged before the move say
`primer.served_models.PhotoClassifier`. A process that has imported primer (the `primer` CLI,
for one) looks the name up in this package and finds them here. New models are logged under
`primer.serving.served_models`; this module goes once no store you use holds an older model.
"""

from primer.serving.served_models import PhotoClassifier, TextGenerator, Translator

__all__ = ["PhotoClassifier", "TextGenerator", "Translator"]
