"""frameavg.models"""
