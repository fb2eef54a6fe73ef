"""frameavg.simulation"""
