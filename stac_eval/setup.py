from setuptools import find_packages, setup

package_name = "stac_eval"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="STAC for ROS 2 developers",
    maintainer_email="stac@example.org",
    description="Replay evaluation and benchmarks of STAC: bits-vs-mIoU, BD-rate, timings.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "stac-bench = stac_eval.bench:main",
            "stac-demo = stac_eval.ros.demo:main",
            "stac-calibrate = stac_eval.calibrate:main",
            "stac-quantize = stac_eval.quantize:main",
            "stac-replay = stac_eval.replay.cli:main",
            "stac-record = stac_eval.ros.recorder_node:main",
        ],
    },
)
