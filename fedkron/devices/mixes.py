"""The built-in device mixes, in the file format's own shape (validated by ``mix_from_mapping``).

Units: Mbit/s, milliseconds (one-way), speed relative to the machine that measured the client
seconds. Every number's source, or the word "estimate", is in docs/devices.md.
"""

# 4G LTE network shared by every phone tier: OpenSignal 4G ~17-25 Mbit/s down, ~5 up, ~50-60 ms RTT;
# sigma 0.8 puts the 10th-90th percentile ratio near 8x (estimate).
_LTE = {
    "down_mbps": {"median": 20.0, "sigma": 0.8, "min": 0.5},
    "up_mbps": {"median": 5.0, "sigma": 0.8, "min": 0.1},
    "latency_ms": {"median": 30.0, "sigma": 0.3},
}
# Bonawitz et al. 2019: 6-10 % of the devices that start a round drop out.
_PHONE = {"availability": 0.5, "dropout": 0.08, **_LTE}

# LTE-M (3GPP Rel-13 Cat-M1): 1 Mbit/s peak, ~300/375 kbit/s half-duplex, ~100s of kbit/s in the field.
_LTEM = {
    "down_mbps": {"median": 0.3, "sigma": 0.6, "max": 0.8},
    "up_mbps": {"median": 0.25, "sigma": 0.6, "max": 1.0},
    "latency_ms": {"median": 100.0, "sigma": 0.5},
}

# Fixed broadband (Ookla Q1 2023 global median 79 / 35 Mbit/s, 9 ms RTT), behind home/office Wi-Fi.
_WIFI = {
    "down_mbps": {"median": 50.0, "sigma": 0.8, "min": 1.0},
    "up_mbps": {"median": 20.0, "sigma": 0.9, "min": 0.5},
    "latency_ms": {"median": 10.0, "sigma": 0.4},
}

BUILTIN_MIXES: dict[str, dict] = {
    "phones-4g": {
        "name": "phones-4g",
        "description": "Android/iOS phones on 4G LTE (cellular, not Wi-Fi), three CPU tiers.",
        "profile": [
            {"name": "phone-flagship", "weight": 0.25, "speed": {"median": 0.5, "sigma": 0.25}, **_PHONE},
            {"name": "phone-mid", "weight": 0.5, "speed": {"median": 0.25, "sigma": 0.25}, **_PHONE},
            {"name": "phone-low", "weight": 0.25, "speed": {"median": 0.1, "sigma": 0.25}, **_PHONE},
        ],
    },
    "iot-lte-m": {
        "name": "iot-lte-m",
        "description": "Linux-class IoT gateways and hubs on LTE-M (Cat-M1), mains powered.",
        "profile": [
            {
                "name": "iot-gateway",
                "weight": 0.5,
                "speed": {"median": 0.1, "sigma": 0.3},
                "availability": 0.8,
                "dropout": 0.05,
                **_LTEM,
            },
            {
                "name": "iot-hub",
                "weight": 0.5,
                "speed": {"median": 0.03, "sigma": 0.3},
                "availability": 0.8,
                "dropout": 0.05,
                **_LTEM,
            },
        ],
    },
    "laptops-wifi": {
        "name": "laptops-wifi",
        "description": "Laptops on home/office Wi-Fi behind fixed broadband.",
        "profile": [
            {
                "name": "laptop",
                "weight": 0.7,
                "speed": {"median": 0.8, "sigma": 0.3},
                "availability": 0.7,
                "dropout": 0.03,
                **_WIFI,
            },
            {
                "name": "laptop-old",
                "weight": 0.3,
                "speed": {"median": 0.4, "sigma": 0.3},
                "availability": 0.7,
                "dropout": 0.03,
                **_WIFI,
            },
        ],
    },
    "datacenter": {
        "name": "datacenter",
        "description": "Cross-silo: servers in different datacenters over the WAN, always on.",
        "profile": [
            {
                "name": "server",
                "weight": 1.0,
                "speed": 1.0,
                "down_mbps": {"median": 1000.0, "sigma": 0.3, "max": 10000.0},
                "up_mbps": {"median": 1000.0, "sigma": 0.3, "max": 10000.0},
                "latency_ms": {"median": 20.0, "sigma": 0.5},
                "availability": 1.0,
                "dropout": 0.0,
            },
        ],
    },
}
