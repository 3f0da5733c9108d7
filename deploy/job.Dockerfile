# An example training job attached to Narset: deploy/train_example.py under torchrun, CPU torch.
# Build from the repository root:  docker build -f deploy/job.Dockerfile -t narset-example-job:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY narset ./narset
COPY kasmina_worker ./kasmina_worker
COPY narset_demo ./narset_demo
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# The CPU build of torch first, so that the worker extra finds it satisfied (no CUDA download).
RUN useradd --create-home --uid 10002 trainer \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "/wheels/narset_kasmina-0.1.0-py3-none-any.whl[worker]" && rm -rf /wheels
WORKDIR /app
COPY deploy/train_example.py ./train_example.py
USER 10002
ENTRYPOINT ["torchrun", "--standalone", "--nproc_per_node=2", "train_example.py"]
