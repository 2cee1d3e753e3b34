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
# Caches every pod would otherwise build at start (matplotlib scans the fonts, about a second),
# built once into the image, as the local backend builds them once per sandbox Python. The
# files are root's and read-only for the sandbox user; the directories are its own, because
# matplotlib and IPython insist on a writable one (and each pod has its own copy anyway).
RUN mkdir -p /opt/kernelcube/matplotlib /opt/kernelcube/ipython \
    && MPLCONFIGDIR=/opt/kernelcube/matplotlib python -c 'import matplotlib.font_manager' \
    && python -m IPython profile create --ipython-dir=/opt/kernelcube/ipython \
    && chown 1000:1000 /opt/kernelcube/matplotlib /opt/kernelcube/ipython
USER 1000:1000
WORKDIR /workspace
ENV HOME=/workspace PYTHONUNBUFFERED=1 MPLCONFIGDIR=/opt/kernelcube/matplotlib IPYTHONDIR=/opt/kernelcube/ipython
# The port a CodeInterpreter reaches PicoD on (its default ports: [{port: 8080}]).
EXPOSE 8080
# The kernel imports numpy, pandas and matplotlib (inline) and draws one figure before /health
# answers 200, so the pod is Ready only once a session would find them loaded: the same
# preload as the local backend's default template (a test keeps the two equal). It is in the
# ENTRYPOINT, not the CMD, because a pod's `args` (a CodeInterpreter's `template.args`, as the
# chart sets them) replace the CMD whole.
ENTRYPOINT ["picod", "--preload=numpy,pandas,matplotlib.pyplot", "--preload-code=if \"matplotlib.backends.backend_agg\" not in __import__(\"sys\").modules:\n    exec(\"from matplotlib.figure import Figure\\nfrom IPython.core.pylabtools import print_figure\\n\"\n         \"figure = Figure()\\nfigure.subplots().plot([1, 2])\\nprint_figure(figure, 'png')\", {})\n%matplotlib inline\n"]
CMD ["--port=8080", "--workspace=/workspace"]
