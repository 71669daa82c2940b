// Azure Monitor -> ITSM bridge: everything `azd up` (or `az deployment sub create`) provisions.
// The ITSM is itsmAdapter's: ServiceNow (default), Jira Service Management, or a plugin adapter whose
// package is in requirements.txt (its settings then go in bridgeSettings).
//
// Subscription scope: creates the resource group, then deploys into it
//   identity     user-assigned managed identity the Function app runs as
//   storage      identity-only storage: host state, deployment package, the bridge's state table and outbox queues
//   monitoring   Log Analytics + Application Insights (local auth off, Entra ingestion)
//   keyvault     RBAC-mode vault with the ITSM secrets that were given (ServiceNow password / OAuth
//                client secret, Jira API token / personal access token)
//   entra        Entra ID application the secure webhook authenticates to, its app role and the
//                assignment of that role to Azure Monitor's action-group service principal
//   rbac         the only Azure roles the identity needs, granted before the app exists
//   api          Flex Consumption plan + Function app + its app settings (after rbac: the app starts
//                with its storage, Key Vault and telemetry roles in place)
//   actiongroup  action group with the secure webhook receiver (+ optional example alert rules)
//   operatorAlerts  alert rules about the bridge itself and the operator action group they notify
//                (never the bridge's own)
//   workbook     Application Insights workbook with the bridge's alert lifecycle at a glance
// Names derive from the environment name and a uniqueString token; every one can be overridden.
targetScope = 'subscription'

// ---------- environment ----------

@minLength(1)
@maxLength(64)
@description('azd environment name; used in resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of every regional resource. Must offer the Flex Consumption plan.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the person or pipeline running the deployment (azd: AZURE_PRINCIPAL_ID). Gets "Key Vault Secrets Officer" so it can rotate the ITSM secrets. Empty: no such assignment.')
param principalId string = ''

// ---------- ITSM ----------

// No @allowed: a plugin adapter (an installed package's `bridge.adapters` entry point) is deployed
// by its name, with its settings in bridgeSettings.
@minLength(1)
@description('ITSM adapter (ITSM_ADAPTER): servicenow, jira, or a plugin\'s name (its package in requirements.txt, its non-secret settings in bridgeSettings).')
param itsmAdapter string = 'servicenow'

// ---------- ServiceNow (itsmAdapter servicenow) ----------

@description('ServiceNow instance, e.g. https://contoso.service-now.com (SERVICENOW_INSTANCE_URL). Required when itsmAdapter is servicenow. Empty: setting omitted.')
param servicenowInstanceUrl string = ''

@description('Basic auth user, or the user of the OAuth password grant. Empty when not used.')
param servicenowUsername string = ''

// Secure parameters: never a value in any default or output. The empty default only means "not used"
// (basic-only or OAuth-only deployments); it also keeps azd from prompting for the unused one.
@secure()
@description('Basic auth password, stored in Key Vault. Empty: no password secret and no SERVICENOW_PASSWORD setting.')
param servicenowPassword string = ''

@description('OAuth client id (/oauth_token.do). Empty when not used.')
param servicenowClientId string = ''

@secure()
@description('OAuth client secret, stored in Key Vault. Empty: no client secret and no SERVICENOW_CLIENT_SECRET setting.')
param servicenowClientSecret string = ''

// ---------- Jira Service Management (itsmAdapter jira) ----------

@description('Jira site, e.g. https://contoso.atlassian.net (Cloud) or https://jira.contoso.com (JIRA_BASE_URL). Required when itsmAdapter is jira. Empty: setting omitted.')
param jiraBaseUrl string = ''

@allowed([
  'cloud'
  'datacenter'
])
@description('JIRA_DEPLOYMENT, set when itsmAdapter is jira: cloud (email + API token) or datacenter (personal access token).')
param jiraDeployment string = 'cloud'

@description('Cloud: the Atlassian account email the API token belongs to (JIRA_EMAIL). Empty: setting omitted.')
param jiraEmail string = ''

@description('Project key new issues go to, e.g. OPS (JIRA_PROJECT). Required when itsmAdapter is jira. Empty: setting omitted.')
param jiraProject string = ''

// Secure like the ServiceNow ones: empty means "not used" (Cloud uses the API token, Data Center the PAT).
@secure()
@description('Cloud: API token, stored in Key Vault. Empty: no API token secret and no JIRA_API_TOKEN setting.')
param jiraApiToken string = ''

@secure()
@description('Data Center: personal access token, stored in Key Vault. Empty: no PAT secret and no JIRA_PAT setting.')
param jiraPat string = ''

// ---------- bridge behaviour ----------

@description('Comma list of subscription ids whose alerts are accepted (ALLOWED_SUBSCRIPTION_IDS). Empty: only this deployment\'s subscription. "*": any subscription.')
param allowedSubscriptionIds string = ''

@description('Extra caller app ids accepted besides Azure Monitor (comma list), e.g. a test client for `python -m bridge send`. Leave empty in production.')
param additionalAllowedAppIds string = ''

@description('Further non-secret bridge settings (names from bridge.config.SETTINGS or the adapter\'s declarations), e.g. {"SERVICENOW_ASSIGNMENT_GROUP": "Cloud Ops"} or {"JIRA_ISSUE_TYPE": "Task"}. They cannot override the settings this template derives.')
param bridgeSettings object = {}

@description('Storage table for the bridge\'s delivery state (STATE_TABLE_NAME).')
param stateTableName string = 'alertstate'

@description('Storage queue for alerts awaiting delivery (OUTBOX_QUEUE_NAME); "<name>-poison" is created too.')
param outboxQueueName string = 'outbox'

@description('Also create two example alert rules (function app Http5xx metric alert, log search alert on the bridge\'s 502/503 answers) that use the action group.')
param deployExampleAlerts bool = false

@allowed([2048, 4096])
@description('Flex Consumption instance memory.')
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(1000)
@description('Flex Consumption scale-out limit.')
param maximumInstanceCount int = 40

@minValue(0)
@maxValue(10)
@description('Always-ready instances for the HTTP functions (alerts, health). 1 keeps a warm instance for Azure Monitor\'s ~10 s webhook timeout; each is billed around the clock (baseline, no free grant). 0: on demand only.')
param alwaysReadyInstances int = 0

// ---------- alerts about the bridge itself ----------

@description('Create the alert rules about the bridge itself (failed or slow answers, dead letters, work pending over 10 minutes, credential refused, silent).')
param deployOperatorAlerts bool = true

@description('Comma list of e-mail addresses an operator action group notifies. Empty (and no operatorActionGroupId): the rules fire without notifying anyone.')
param operatorEmails string = ''

@description('Resource id of an existing action group the rules notify instead (a team\'s paging or ticketing group); never the bridge\'s own. Wins over operatorEmails.')
param operatorActionGroupId string = ''

@description('Object ids of further owners of the Entra application (the deploying principal always becomes one).')
param additionalAppOwnerIds array = []

// ---------- name overrides (empty: derived) ----------

param resourceGroupName string = ''
param userAssignedIdentityName string = ''
param storageAccountName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''
param keyVaultName string = ''
param appServicePlanName string = ''
param functionAppName string = ''
param actionGroupName string = ''
@maxLength(12)
param actionGroupShortName string = 'itsm-bridge'
param operatorActionGroupName string = ''
@maxLength(12)
param operatorActionGroupShortName string = 'itsm-ops'
param entraAppUniqueName string = ''
param entraAppDisplayName string = ''

// ---------- derived names ----------

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var azureMonitorAppId = '461e8683-5575-4561-ac7f-899cc907d62a'
var webhookRoleValue = 'ActionGroupsSecureWebhook'

var rgName = !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}itsm-${resourceToken}'
var deploymentContainerName = 'app-package-${take(toLower(appName), 32)}-${take(resourceToken, 7)}'
var appUniqueName = !empty(entraAppUniqueName) ? entraAppUniqueName : 'itsm-bridge-${environmentName}-${resourceToken}'

var extraAppIds = empty(additionalAllowedAppIds) ? [] : split(replace(additionalAllowedAppIds, ' ', ''), ',')
var operatorEmailList = empty(operatorEmails) ? [] : split(replace(operatorEmails, ' ', ''), ',')
// The comparison is parenthesized because pycep-parser (tests/infra) would otherwise misread the precedence.
var subscriptionsSetting = empty(allowedSubscriptionIds) ? subscription().subscriptionId : ((allowedSubscriptionIds == '*') ? '' : allowedSubscriptionIds)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: rgName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(userAssignedIdentityName) ? userAssignedIdentityName : '${abbrs.managedIdentityUserAssignedIdentities}itsm-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    stateTableName: stateTableName
    outboxQueueName: outboxQueueName
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module keyvault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    servicenowPassword: servicenowPassword
    servicenowClientSecret: servicenowClientSecret
    jiraApiToken: jiraApiToken
    jiraPat: jiraPat
  }
}

module entra 'app/entra.bicep' = {
  name: 'entra'
  scope: rg
  params: {
    uniqueName: appUniqueName
    displayName: !empty(entraAppDisplayName) ? entraAppDisplayName : 'Azure Monitor ITSM bridge (${environmentName})'
    environmentName: environmentName
    roleValue: webhookRoleValue
    azureMonitorAppId: azureMonitorAppId
    additionalOwnerIds: additionalAppOwnerIds
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    planName: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyInstances: alwaysReadyInstances
    authAudiences: [
      entra.outputs.appId
      entra.outputs.identifierUri
    ]
    authAllowedAppIds: concat([azureMonitorAppId], extraAppIds)
    authRequiredRole: webhookRoleValue
    allowedSubscriptionIds: subscriptionsSetting
    itsmAdapter: itsmAdapter
    servicenowInstanceUrl: servicenowInstanceUrl
    servicenowUsername: servicenowUsername
    servicenowClientId: servicenowClientId
    servicenowPasswordSecretUri: empty(servicenowPassword) ? '' : keyvault.outputs.basicAuthCredentialUri
    servicenowClientSecretSecretUri: empty(servicenowClientSecret) ? '' : keyvault.outputs.oauthCredentialUri
    jiraBaseUrl: jiraBaseUrl
    jiraDeployment: jiraDeployment
    jiraEmail: jiraEmail
    jiraProject: jiraProject
    jiraApiTokenSecretUri: empty(jiraApiToken) ? '' : keyvault.outputs.jiraApiTokenCredentialUri
    jiraPatSecretUri: empty(jiraPat) ? '' : keyvault.outputs.jiraPatCredentialUri
    stateTableName: stateTableName
    outboxQueueName: outboxQueueName
    bridgeSettings: bridgeSettings
  }
  // The app starts (and resolves its Key Vault references, opens its storage and sends telemetry) as
  // soon as it exists: its roles must be granted first. Role assignments can still take a few minutes
  // to propagate; the host retries meanwhile.
  dependsOn: [
    rbac
  ]
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyvault.outputs.name
    operatorPrincipalId: principalId
  }
}

module actionGroup 'app/actiongroup.bicep' = {
  name: 'actiongroup'
  scope: rg
  params: {
    name: !empty(actionGroupName) ? actionGroupName : '${abbrs.insightsActionGroups}itsm-${resourceToken}'
    shortName: actionGroupShortName
    tags: tags
    serviceUri: 'https://${api.outputs.defaultHostName}/api/alerts'
    webhookAppObjectId: entra.outputs.objectId
    webhookIdentifierUri: entra.outputs.identifierUri
    tenantId: tenant().tenantId
    deployExampleAlerts: deployExampleAlerts
    location: location
    functionAppId: api.outputs.id
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    metricAlertName: '${abbrs.insightsMetricAlerts}itsm-http5xx-${resourceToken}'
    logAlertName: '${abbrs.insightsScheduledQueryRules}itsm-unavailable-${resourceToken}'
  }
  // The bridge must be able to read its settings before the first test notification arrives.
  dependsOn: [
    rbac
  ]
}

// Routed to the operators, never to actionGroup above: an alert that the bridge is failing must not
// depend on the bridge to be heard.
module operatorAlerts 'app/operator-alerts.bicep' = if (deployOperatorAlerts) {
  name: 'operator-alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    existingActionGroupId: operatorActionGroupId
    operatorEmails: operatorEmailList
    actionGroupName: empty(operatorActionGroupName) ? '${abbrs.insightsActionGroups}itsm-ops-${resourceToken}' : operatorActionGroupName
    actionGroupShortName: operatorActionGroupShortName
    rulePrefix: '${abbrs.insightsScheduledQueryRules}itsm-'
    ruleSuffix: '-${resourceToken}'
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

// ---------- outputs (azd writes them to .azure/<env>/.env; never a secret) ----------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output BRIDGE_ALERTS_URL string = 'https://${api.outputs.defaultHostName}/api/alerts'
output BRIDGE_HEALTH_URL string = 'https://${api.outputs.defaultHostName}/api/health'
output WEBHOOK_APP_CLIENT_ID string = entra.outputs.appId
output WEBHOOK_APP_OBJECT_ID string = entra.outputs.objectId
output WEBHOOK_APP_ID_URI string = entra.outputs.identifierUri
output WEBHOOK_TOKEN_SCOPE string = '${entra.outputs.identifierUri}/.default'
output AZURE_ACTION_GROUP_ID string = actionGroup.outputs.id
output AZURE_KEY_VAULT_NAME string = keyvault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output BRIDGE_WORKBOOK_ID string = workbook.outputs.id
// Empty when the rules notify nobody (or are not deployed). Not named like the OPERATOR_ACTION_GROUP_ID
// azd variable: azd writes outputs back into the environment, and the next provision would read it.
output BRIDGE_OPERATOR_ACTION_GROUP_ID string = deployOperatorAlerts ? operatorAlerts.outputs.actionGroupId : ''
