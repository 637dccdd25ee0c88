from edge_app.cli import main

main()
