package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/myusta/cdc/migrations"
)

// cmdTeardown removes what cdc put on the source: the replication slot
// (which otherwise keeps WAL forever), the publication and the notify-mode
// trigger. It asks for the slot name first, unless --yes. The chat side is
// left alone: the chat table is the app's data, and cdc_checkpoint without
// a slot only makes a later start copy again.
func cmdTeardown(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("teardown", flag.ContinueOnError)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	if cfg.SourceURL == "" {
		return usageError("SOURCE_DATABASE_URL is not set")
	}
	pool, err := openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, 2, oneShotPolicy(cfg))
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Fprintf(e.stdout, "This removes from the source database: replication slot %s, publication %s, trigger %s and function %s on %s.\n",
		cfg.SlotName, cfg.PublicationName, migrations.NotifyTrigger, migrations.NotifyFunction, cfg.SourceTable)
	if !*yes {
		fmt.Fprintf(e.stdout, "Stop cdc run first. Type the slot name (%s) to confirm: ", cfg.SlotName)
		line, _ := bufio.NewReader(e.stdin).ReadString('\n')
		if strings.TrimSpace(line) != cfg.SlotName {
			return &exitError{code: exitFailure, err: fmt.Errorf("not confirmed: nothing removed")}
		}
	}
	spec := migrations.SpecFor(cfg)
	msgs := []string{}
	msg, err := migrations.DropSlot(ctx, pool, cfg.SlotName)
	if err != nil {
		return err
	}
	msgs = append(msgs, msg)
	if msg, err = migrations.DropPublication(ctx, pool, spec); err != nil {
		return err
	}
	msgs = append(msgs, msg)
	if msg, err = migrations.DropNotifyTrigger(ctx, pool, spec); err != nil {
		return err
	}
	msgs = append(msgs, msg)
	removed := 0
	for _, m := range msgs {
		if m != "" {
			fmt.Fprintln(e.stdout, "source:", m)
			removed++
		}
	}
	if removed == 0 {
		fmt.Fprintln(e.stdout, "source: nothing of cdc's was there")
	}
	return nil
}
