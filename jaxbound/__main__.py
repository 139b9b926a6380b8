from jaxbound.cli import main
import sys
sys.exit(main())
