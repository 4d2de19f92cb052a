"""Thin HTTP layers, one concern each: parse, call one domain function, shape the answer."""
