"""kernel_gateway_ext"""
