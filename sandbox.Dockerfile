# The sandbox image: PicoD, a Jupyter kernel (ipykernel) and numpy, pandas, matplotlib; what
# every CodeInterpreter pod runs. The chart's default CodeInterpreter points at it.
#   docker build -f sandbox.Dockerfile -t kernelcube-sandbox:0.1.0 .
# PicoD and user code run as the same unprivileged user (uid 1000): in a pod, the pod itself
# (its NetworkPolicy, no service-account token, an optional gVisor/Kata runtimeClassName) is the
# sandbox boundary.

FROM python:3.11-slim
RUN groupadd --gid 1000 sandbox \
    && useradd --uid 1000 --gid 1000 --home-dir /workspace --no-create-home \
       --shell /bin/bash sandbox \
    && mkdir -p /workspace \
    && chown 1000:1000 /workspace
# What PicoD and user code need (the same list as the local sandboxes' .sandbox-venv).
COPY sandbox-requirements.txt /tmp/sandbox-requirements.txt
RUN pip install --no-cache-dir -r /tmp/sandbox-requirements.txt \
    && rm /tmp/sandbox-requirements.txt
# PicoD itself (the `picod` console script). --no-deps: only sandbox-requirements.txt is
# installed, not the gateway's dependencies, so user code sees a plain scientific Python.
COPY . /src
RUN pip install --no-cache-dir --no-deps /src && rm -rf /src
USER 1000:1000
WORKDIR /workspace
ENV HOME=/workspace PYTHONUNBUFFERED=1 MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib
# The port a CodeInterpreter reaches PicoD on (its default ports: [{port: 8080}]).
EXPOSE 8080
ENTRYPOINT ["picod"]
CMD ["--port=8080", "--workspace=/workspace"]
