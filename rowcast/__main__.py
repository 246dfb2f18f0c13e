from rowcast.ops.cli import main

main()
