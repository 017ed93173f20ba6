"""What users register lungs for: landmark evaluation, regional ventilation, whole 4D-CT registration.
"""
