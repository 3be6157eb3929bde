from grpo_cli.cli import train_main

train_main()
