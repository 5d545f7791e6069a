from scdask.cli import main

main()
