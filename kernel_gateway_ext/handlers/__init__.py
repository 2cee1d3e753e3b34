"""The gateway's HTTP faces: AgentCube Router and Workload Manager, the execute API, health."""
