package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/leader"
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
	force := fs.Bool("force", false, "remove cdc's objects even while a cdc instance is active (ending its replication connection)")
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
	if err := checkInactive(ctx, e, cfg, *force); err != nil {
		return err
	}
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
	drop := migrations.DropSlot
	if *force {
		drop = migrations.ForceDropSlot // ends the active cdc's replication connection
	}
	msg, err := drop(ctx, pool, cfg.SlotName)
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

// checkInactive refuses (exit 2) while a cdc instance is active on the
// slot — it holds its leader lock on the chat database — unless force: a
// running cdc would find its slot, publication or trigger gone.
func checkInactive(ctx context.Context, e *env, cfg *config.Config, force bool) error {
	if cfg.ChatURL == "" {
		fmt.Fprintln(e.stdout, "CHAT_DATABASE_URL is not set, so whether a cdc instance is active cannot be checked: make sure none is")
		return nil
	}
	holder, err := leader.Holder(ctx, cfg.ChatURL, cfg.SlotName)
	if err != nil {
		return fmt.Errorf("check for an active cdc: %w", err)
	}
	switch {
	case holder == "":
		return nil
	case force:
		fmt.Fprintf(e.stdout, "a cdc instance is active on slot %s (%s); removing its objects anyway (--force)\n", cfg.SlotName, holder)
		return nil
	}
	return usageError("a cdc instance is active on slot %s: %s; stop it first (or pass --force to remove its objects from under it)", cfg.SlotName, holder)
}
