"""kernelcube"""
