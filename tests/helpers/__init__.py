"""What several test modules share, one idea a module; tests import it as `helpers.<module>` (pytest puts tests/
on sys.path: pyproject.toml's one pythonpath entry). Fixtures stay in tests/conftest.py; no test module imports
another (tests/test_suite_layout.py checks both).

    repo          the checkout: its paths, its files (git's or .dockerignore's) and committed copies of it
    images        tiny real image files: photos, a PNG bomb, class folders of JPEGs
    environment   subprocesses' environment (this venv first on PATH) and system tools a test needs
    probes        benchmarks/ modules the tests load by path (the host-sync probe)
    pipeline      the DVC pipeline in a copied checkout: its stages, tiny sources, params edits, `dvc exp show`
    compose       docker-compose.yml's services, with .env's variables interpolated as compose does
    servers       free ports and the `mlflow server` processes the tests start (plain, and the team's)
    tiny_cnn      tiny inputs of the image stages: augment's folders, split and params; train_cnn's arrays
    tiny_lm       train_lm's tiny corpus and params
    tiny_transformer  train_transformer's twenty pairs, and a small Seq2SeqTransformer
    saved_models  tiny models saved as the training stages save them (a translator), and an LM's text
    toy_fit       `fit` over a toy linear model whose validation scores are scripted
    layers        the package's layers and the import graph of primer/ and stages/, read from the source
    s3_store      a real S3 object store (SeaweedFS) on 127.0.0.1
    podman_stack  podman as a stand-in Docker engine, and stand-in base images
"""
