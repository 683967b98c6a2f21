"""The master service's entrypoint: `distq master`, configured by DISTQ_* variables.

Container images and Kubernetes manifests run this file; all logic lives in the distq
package.
"""

import sys

from distq.startup import main  # its stop signals held from here on, as it imports

if __name__ == "__main__":
    sys.exit(main(["master", *sys.argv[1:]]))
