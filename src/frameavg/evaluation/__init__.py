"""frameavg.evaluation"""
