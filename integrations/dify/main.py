"""The plugin's entry point, as Dify's plugin daemon runs it (`python -m main`)."""

from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=900))

if __name__ == "__main__":
    plugin.run()
