"""What several test modules share, one idea a module; tests import it as `helpers.<module>` (pytest puts tests/
on sys.path: pyproject.toml's pythonpath). Fixtures stay in tests/conftest.py.

    repo          the checkout: its paths, its files (git's or .dockerignore's) and committed copies of it
    images        tiny real image files: photos, a PNG bomb, class folders of JPEGs
    environment   subprocesses' environment (this venv first on PATH) and system tools a test needs
    probes        benchmarks/ modules the tests load by path (the host-sync probe)
    pipeline      the DVC pipeline in a copied checkout: `dvc exp show`'s experiments
    tiny_cnn      train_cnn's tiny arrays and params
    layers        the package's layers and the import graph of primer/ and stages/, read from the source
    s3_store      a real S3 object store (SeaweedFS) on 127.0.0.1
    podman_stack  podman as a stand-in Docker engine, and stand-in base images
"""
