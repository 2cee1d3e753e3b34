"""The SandboxTemplate reconciler: label the template, keep its one NetworkPolicy in shape."""

from __future__ import annotations

import logging

from controller import naming as n
from controller import template_logic as logic
from controller.context import Context
from controller.errors import AlreadyExists, NotFound
from controller.resources import NETWORK_POLICIES, TEMPLATES
from controller.sandbox_logic import is_controlled_by

log = logging.getLogger(__name__)


class TemplateReconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        template = self.ctx.templates.get(*key)
        if template is None or template["metadata"].get("deletionTimestamp"):
            return None
        ns, name = key
        want_hash = n.name_hash(name)
        if (template["metadata"].get("labels") or {}).get(n.TEMPLATE_REF_HASH) != want_hash:
            await self.ctx.kube.patch(TEMPLATES, ns, name,
                                      {"metadata": {"labels": {n.TEMPLATE_REF_HASH: want_hash}}})
        settings = self.ctx.settings
        desired = logic.desired_network_policy(template, settings.gateway_namespace,
                                               settings.gateway_labels)
        policy_name = n.network_policy_name(name)
        try:
            current = await self.ctx.kube.get(NETWORK_POLICIES, ns, policy_name)
        except NotFound:
            current = None
        if desired is None:
            if current is not None and is_controlled_by(current, template):
                await self.ctx.kube.delete(NETWORK_POLICIES, ns, policy_name,
                                           uid=current["metadata"]["uid"])
            return None
        if current is None:
            try:
                await self.ctx.kube.create(NETWORK_POLICIES, ns, desired)
            except AlreadyExists:
                return 0.2  # it appeared meanwhile: look again
        elif not is_controlled_by(current, template):
            log.warning("NetworkPolicy %s/%s exists and is not owned by template %s; leaving it",
                        ns, policy_name, name)
        elif current.get("spec") != desired["spec"]:
            await self.ctx.kube.patch(NETWORK_POLICIES, ns, policy_name,
                                      {"spec": desired["spec"]})
        return None
