using Crest.Core;
using Crest.Store;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>The checks every <see cref="IRuntimeStore"/> passes; one subclass per implementation.</summary>
public abstract class RuntimeStoreConformance : IDisposable
{
    private readonly TempDir _dir = new();

    protected abstract Task<IRuntimeStore> CreateAsync(string root);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static SandboxRecord Sandbox(string id, SandboxState state = SandboxState.Ready) => new()
    {
        Id = id,
        Spec = new PodSpec { Name = "pod-" + id, Uid = "uid-" + id, Namespace = "default" },
        State = state,
        CreatedAt = DateTimeOffset.UnixEpoch,
        RuntimeHandler = "runc",
        Ips = ["10.88.0.2"],
        InfraPid = 42,
    };

    internal static ContainerRecord Container(string id, string sandboxId, ContainerState state = ContainerState.Created) => new()
    {
        Id = id,
        SandboxId = sandboxId,
        Spec = new ContainerSpec { Name = "c-" + id, Image = "busybox" },
        State = state,
        CreatedAt = DateTimeOffset.UnixEpoch,
        ImageId = "sha256:" + new string('a', 64),
        ImageRef = "busybox",
        RuntimeHandler = "runc",
    };

    [Fact]
    public async Task A_sandbox_is_read_back_as_it_was_put()
    {
        var store = await CreateAsync(_dir.Path);

        await store.PutSandboxAsync(Sandbox("s1"), Ct);

        var read = await store.GetSandboxAsync("s1", Ct);
        Assert.NotNull(read);
        Assert.Equal(SandboxState.Ready, read.State);
        Assert.Equal("pod-s1", read.Spec.Name);
        Assert.Equal(["10.88.0.2"], read.Ips);
        Assert.Equal(42, read.InfraPid);
    }

    [Fact]
    public async Task Putting_a_record_again_replaces_it_and_keeps_its_place_in_the_list()
    {
        var store = await CreateAsync(_dir.Path);
        await store.PutContainerAsync(Container("c1", "s1"), Ct);
        await store.PutContainerAsync(Container("c2", "s1"), Ct);

        await store.PutContainerAsync(Container("c1", "s1", ContainerState.Running) with { Pid = 7 }, Ct);

        var all = await store.ListContainersAsync(Ct);
        Assert.Equal(["c1", "c2"], all.Select(c => c.Id));
        Assert.Equal(ContainerState.Running, all[0].State);
        Assert.Equal(7, all[0].Pid);
    }

    [Fact]
    public async Task An_unknown_id_reads_as_null_and_deletes_without_error()
    {
        var store = await CreateAsync(_dir.Path);

        Assert.Null(await store.GetSandboxAsync("nope", Ct));
        Assert.Null(await store.GetContainerAsync("nope", Ct));
        await store.DeleteSandboxAsync("nope", Ct);
        await store.DeleteContainerAsync("nope", Ct);
    }

    [Fact]
    public async Task A_deleted_record_is_gone_from_get_and_list()
    {
        var store = await CreateAsync(_dir.Path);
        await store.PutSandboxAsync(Sandbox("s1"), Ct);
        await store.PutContainerAsync(Container("c1", "s1"), Ct);

        await store.DeleteContainerAsync("c1", Ct);
        await store.DeleteSandboxAsync("s1", Ct);

        Assert.Null(await store.GetContainerAsync("c1", Ct));
        Assert.Empty(await store.ListContainersAsync(Ct));
        Assert.Empty(await store.ListSandboxesAsync(Ct));
    }

    [Fact]
    public async Task A_conditional_update_writes_only_a_record_still_in_the_expected_state()
    {
        var store = await CreateAsync(_dir.Path);
        await store.PutSandboxAsync(Sandbox("s1"), Ct);
        await store.PutContainerAsync(Container("c1", "s1", ContainerState.Running), Ct);

        Assert.True(await store.TryUpdateContainerAsync(Container("c1", "s1", ContainerState.Exited) with { ExitCode = 137 }, ContainerState.Running, Ct));
        Assert.False(await store.TryUpdateContainerAsync(Container("c1", "s1", ContainerState.Exited) with { ExitCode = 1 }, ContainerState.Running, Ct));
        Assert.Equal(137, (await store.GetContainerAsync("c1", Ct))!.ExitCode);
        Assert.False(await store.TryUpdateSandboxAsync(Sandbox("s1", SandboxState.NotReady), SandboxState.NotReady, Ct));
        Assert.True(await store.TryUpdateSandboxAsync(Sandbox("s1", SandboxState.NotReady), SandboxState.Ready, Ct));

        // A record deleted meanwhile is never written back.
        await store.DeleteContainerAsync("c1", Ct);
        await store.DeleteSandboxAsync("s1", Ct);
        Assert.False(await store.TryUpdateContainerAsync(Container("c1", "s1", ContainerState.Exited), ContainerState.Exited, Ct));
        Assert.False(await store.TryUpdateSandboxAsync(Sandbox("s1", SandboxState.NotReady), SandboxState.Ready, Ct));
        Assert.Empty(await store.ListContainersAsync(Ct));
        Assert.Empty(await store.ListSandboxesAsync(Ct));
    }

    [Fact]
    public async Task The_restore_fields_of_a_container_survive()
    {
        var store = await CreateAsync(_dir.Path);

        await store.PutContainerAsync(Container("c1", "s1") with { RestoreDir = "/var/lib/crest/containers/c1/restore", Restored = true, User = new ProcessUser(1000, 1000, [10]) }, Ct);

        var read = await store.GetContainerAsync("c1", Ct);
        Assert.Equal("/var/lib/crest/containers/c1/restore", read!.RestoreDir);
        Assert.True(read.Restored);
        Assert.Equal([10u], read.User!.Groups);
    }

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class SqliteRuntimeStoreTests : RuntimeStoreConformance
{
    protected override async Task<IRuntimeStore> CreateAsync(string root) =>
        new SqliteRuntimeStore(await MetadataStore.OpenAsync(Path.Combine(root, "crest.db"), TimeProvider.System, TestContext.Current.CancellationToken));
}

public sealed class MemoryRuntimeStoreTests : RuntimeStoreConformance
{
    protected override Task<IRuntimeStore> CreateAsync(string root) => Task.FromResult<IRuntimeStore>(new MemoryRuntimeStore());
}
