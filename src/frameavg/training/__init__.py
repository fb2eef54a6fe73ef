"""frameavg.training"""
