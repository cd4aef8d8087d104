<#
.SYNOPSIS
  Triage snapshot of a Windows host for live response: processes, services, autoruns and
  network connections, written to standard output as one JSON document.
.DESCRIPTION
  Read-only: nothing is changed on the host and nothing is written to disk. Shipped with the
  live response pipeline's bundled playbooks (shared/playbooks/library/triage.ps1) and kept in
  the tenant's live response library by the pipeline, verified by SHA-256.
.PARAMETER Quick
  Processes and network connections only.
.PARAMETER Full
  Everything: processes (with command lines and image hashes), services, autoruns (Run keys,
  scheduled tasks, startup folders) and network connections.
#>
[CmdletBinding()]
param(
    [switch]$Quick,
    [switch]$Full
)

$ErrorActionPreference = 'SilentlyContinue'
$started = (Get-Date).ToUniversalTime()

function Get-ImageHash([string]$Path) {
    if ($Path -and (Test-Path -LiteralPath $Path -PathType Leaf)) {
        (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash
    }
}

$processes = Get-CimInstance Win32_Process | ForEach-Object {
    $p = [ordered]@{
        pid        = $_.ProcessId
        ppid       = $_.ParentProcessId
        name       = $_.Name
        path       = $_.ExecutablePath
        created    = if ($_.CreationDate) { $_.CreationDate.ToUniversalTime().ToString('o') }
    }
    if ($Full) {
        $p.command_line = $_.CommandLine
        $p.sha256 = Get-ImageHash $_.ExecutablePath
        $owner = Invoke-CimMethod -InputObject $_ -MethodName GetOwner
        if ($owner.User) { $p.owner = "$($owner.Domain)\$($owner.User)" }
    }
    $p
}

$connections = Get-NetTCPConnection | ForEach-Object {
    [ordered]@{
        local   = "$($_.LocalAddress):$($_.LocalPort)"
        remote  = "$($_.RemoteAddress):$($_.RemotePort)"
        state   = "$($_.State)"
        pid     = $_.OwningProcess
    }
}

$snapshot = [ordered]@{
    host        = $env:COMPUTERNAME
    mode        = if ($Full) { 'full' } else { 'quick' }
    started_utc = $started.ToString('o')
    processes   = @($processes)
    connections = @($connections)
}

if ($Full) {
    $snapshot.services = @(Get-CimInstance Win32_Service | ForEach-Object {
        [ordered]@{
            name       = $_.Name
            state      = $_.State
            start_mode = $_.StartMode
            path       = $_.PathName
            account    = $_.StartName
        }
    })
    $runKeys = @(
        'HKLM:\Software\Microsoft\Windows\CurrentVersion\Run',
        'HKLM:\Software\Microsoft\Windows\CurrentVersion\RunOnce',
        'HKLM:\Software\WOW6432Node\Microsoft\Windows\CurrentVersion\Run',
        'HKCU:\Software\Microsoft\Windows\CurrentVersion\Run',
        'HKCU:\Software\Microsoft\Windows\CurrentVersion\RunOnce'
    )
    $autoruns = foreach ($key in $runKeys) {
        $item = Get-ItemProperty -LiteralPath $key
        if ($item) {
            $item.PSObject.Properties | Where-Object { $_.Name -notlike 'PS*' } | ForEach-Object {
                [ordered]@{ location = $key; name = $_.Name; command = "$($_.Value)" }
            }
        }
    }
    $startup = @(
        "$env:ProgramData\Microsoft\Windows\Start Menu\Programs\StartUp"
    )
    foreach ($dir in $startup) {
        Get-ChildItem -LiteralPath $dir -File | ForEach-Object {
            $autoruns += [ordered]@{ location = $dir; name = $_.Name; command = $_.FullName }
        }
    }
    $snapshot.autoruns = @($autoruns)
    $snapshot.scheduled_tasks = @(Get-ScheduledTask | Where-Object { $_.State -ne 'Disabled' } | ForEach-Object {
        [ordered]@{
            path    = "$($_.TaskPath)$($_.TaskName)"
            state   = "$($_.State)"
            actions = @($_.Actions | ForEach-Object { "$($_.Execute) $($_.Arguments)".Trim() })
        }
    })
}

$snapshot.finished_utc = (Get-Date).ToUniversalTime().ToString('o')
$snapshot | ConvertTo-Json -Depth 6 -Compress
