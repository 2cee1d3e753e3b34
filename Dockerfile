# The gateway and controller image: `kernelcube` (the gateway, the default) and
# `kernelcube-controller`, one Python install of this repository (setup.cfg).
#   docker build -t kernelcube:0.1.0 .
# The Helm chart runs it with `--backend kubernetes` (sandboxes are pods), so it needs neither
# bubblewrap nor the sandbox Python: those belong to sandbox.Dockerfile.

FROM python:3.11-slim AS build
WORKDIR /src
# .dockerignore keeps virtualenvs, tests, charts and caches out of the context.
COPY . /src
RUN pip wheel --no-cache-dir --wheel-dir /wheels /src

FROM python:3.11-slim
RUN groupadd --gid 10001 kernelcube \
    && useradd --uid 10001 --gid 10001 --home-dir /home/kernelcube --create-home \
       --shell /usr/sbin/nologin kernelcube
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /home/kernelcube
ENV PYTHONUNBUFFERED=1
# 8888: the gateway; 8080: the controller's /metrics, /healthz and /readyz.
EXPOSE 8888 8080
ENTRYPOINT ["kernelcube"]
CMD ["--ip=0.0.0.0", "--port=8888", "--backend=kubernetes"]
