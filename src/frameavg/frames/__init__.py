"""frameavg.frames"""
