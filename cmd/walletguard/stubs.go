package main

func cmdRun(args []string) int   { return 1 }
func cmdDemo(args []string) int  { return 1 }
func cmdRules(args []string) int { return 1 }
func cmdConfig(args []string) int { return 1 }
func cmdVersion() int            { return 0 }
